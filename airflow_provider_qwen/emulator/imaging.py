"""
The edit itself: a deterministic Pillow effect chosen by the prompt's words.

The same image, prompt, seed, strength and format always give the same bytes, so tests and demos
can compare checksums.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

ACCEPTED_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MAX_IMAGE_BYTES = 10 * 1024 * 1024


class ImageProblem(ValueError):
    """The source image cannot be edited: too large, not an image, or of a type not accepted."""


def _sepia(image: Image.Image) -> Image.Image:
    return ImageOps.colorize(ImageOps.grayscale(image), "#2e1f0f", "#f3e3c3")


def _tint(red: float, green: float, blue: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        channels = [
            band.point(lambda v, f=factor: min(255, int(v * f)))
            for band, factor in zip(image.split(), (red, green, blue), strict=True)
        ]
        return Image.merge("RGB", channels)

    return apply


#: (words in the prompt, effect), first match wins.
EFFECTS: list[tuple[tuple[str, ...], Callable[[Image.Image], Image.Image]]] = [
    (("sepia", "vintage"), _sepia),
    (("black and white", "grayscale", "greyscale", "monochrome"), lambda im: ImageOps.grayscale(im).convert("RGB")),
    (("blur", "dreamy", "soft"), lambda im: im.filter(ImageFilter.GaussianBlur(3))),
    (("sharpen", "crisp"), lambda im: im.filter(ImageFilter.UnsharpMask(radius=2, percent=200))),
    (("warm", "golden", "sunset"), _tint(1.15, 1.0, 0.8)),
    (("cool", "winter", "cold"), _tint(0.85, 0.95, 1.2)),
    (("invert", "negative"), ImageOps.invert),
    (("posterize", "pop art"), lambda im: ImageOps.posterize(im, 2)),
]


def _default_effect(image: Image.Image) -> Image.Image:
    return ImageEnhance.Contrast(ImageOps.autocontrast(image)).enhance(1.3)


def choose_effect(prompt: str) -> Callable[[Image.Image], Image.Image]:
    """The effect whose words appear first in the list, or a contrast boost."""
    lowered = prompt.lower()
    for words, effect in EFFECTS:
        if any(word in lowered for word in words):
            return effect
    return _default_effect


def open_image(data: bytes) -> tuple[Image.Image, str]:
    """Decode a source image and return it with its MIME type."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageProblem(f"image is {len(data)} bytes, over the 10 MB limit")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:
        raise ImageProblem(f"image_url is not a readable image: {err}") from None
    if image.format not in ACCEPTED_TYPES:
        raise ImageProblem(f"image type {image.format} is not accepted (jpeg, png or webp)")
    return image, ACCEPTED_TYPES[image.format]


def edit_image(data: bytes, prompt: str, *, strength: float = 0.8, seed: int = 0, output_format: str = "png") -> bytes:
    """Apply the prompt's effect, blended with the original by ``strength`` and shifted by ``seed``."""
    source = open_image(data)[0].convert("RGB")
    edited = choose_effect(prompt)(source).convert("RGB")
    shifts = random.Random(seed).sample(range(-24, 25), 3)  # one per channel: seeds rarely coincide
    edited = Image.merge(
        "RGB",
        [
            band.point(lambda v, s=shift: max(0, min(255, v + s)))
            for band, shift in zip(edited.split(), shifts, strict=True)
        ],
    )
    result = Image.blend(source, edited, strength)
    buffer = io.BytesIO()
    if output_format == "jpeg":
        result.save(buffer, format="JPEG", quality=90)
    else:
        result.save(buffer, format="PNG")
    return buffer.getvalue()
