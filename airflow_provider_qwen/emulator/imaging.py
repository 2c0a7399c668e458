"""
The edit itself: a deterministic Pillow effect chosen by the prompt's words.

The same image, prompt, seed, strength and format always give the same bytes (no timestamps or
other metadata are written), so tests and demos can compare checksums.
"""

from __future__ import annotations

import io
import mimetypes
import random
from collections.abc import Callable

from PIL import Image, ImageChops, ImageEnhance, ImageFilter, ImageOps

#: Pillow format name → MIME type, for the source types the model accepts.
ACCEPTED_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: output_format → (Pillow format, MIME type, file extension)
OUTPUT_FORMATS = {"png": ("PNG", "image/png", "png"), "jpeg": ("JPEG", "image/jpeg", "jpg")}

Effect = Callable[[Image.Image], Image.Image]


class ImageProblem(ValueError):
    """The source image cannot be edited: missing, too large, not an image, or of a type not accepted."""


def _sepia(image: Image.Image) -> Image.Image:
    return ImageOps.colorize(ImageOps.grayscale(image), "#2e1f0f", "#f3e3c3")


def _tint(red: float, green: float, blue: float) -> Effect:
    def apply(image: Image.Image) -> Image.Image:
        channels = [
            band.point(lambda v, f=factor: min(255, int(v * f)))
            for band, factor in zip(image.split(), (red, green, blue), strict=True)
        ]
        return Image.merge("RGB", channels)

    return apply


def _contrast(image: Image.Image) -> Image.Image:
    return ImageEnhance.Contrast(ImageOps.autocontrast(image)).enhance(1.3)


#: (words in the prompt, effect), first match wins; a prompt matching none gets a contrast boost.
EFFECTS: list[tuple[tuple[str, ...], Effect]] = [
    (("sepia", "vintage"), _sepia),
    (("black and white", "grayscale", "greyscale", "monochrome"), lambda im: ImageOps.grayscale(im).convert("RGB")),
    (("blur", "dreamy", "soft"), lambda im: im.filter(ImageFilter.GaussianBlur(3))),
    (("sharpen", "crisp"), lambda im: im.filter(ImageFilter.UnsharpMask(radius=2, percent=200))),
    (("warm", "golden", "sunset"), _tint(1.15, 1.0, 0.8)),
    (("cool", "winter", "cold"), _tint(0.85, 0.95, 1.2)),
    (("invert", "negative"), ImageOps.invert),
    (("posterize", "pop art"), lambda im: ImageOps.posterize(im, 2)),
]


def choose_effect(prompt: str) -> Effect:
    """The first effect whose words appear in ``prompt`` (case-insensitive), else a contrast boost."""
    lowered = prompt.lower()
    for words, effect in EFFECTS:
        if any(word in lowered for word in words):
            return effect
    return _contrast


def sniff_mime(data: bytes, file_name: str | None = None) -> str:
    """The MIME type of a file, from the image format Pillow reads in it, else from its name's extension."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Image.MIME[image.format]
    except (OSError, KeyError, ValueError):  # not an image Pillow knows, or one without a MIME type
        return mimetypes.guess_type(file_name or "")[0] or "application/octet-stream"


def open_image(data: bytes, content_type: str | None = None) -> Image.Image:
    """
    Decode a source image, refusing what the model would refuse.

    :param content_type: the type it was served with, if known; it must be an accepted one too.
    :raises ImageProblem: with a message fit for a task's ``failMsg``.
    """
    accepted = ", ".join(sorted(ACCEPTED_TYPES.values()))
    if content_type is not None and content_type.split(";")[0].strip().lower() not in ACCEPTED_TYPES.values():
        raise ImageProblem(f"image_url content type {content_type!r} is not accepted ({accepted})")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageProblem(f"image_url file is {len(data)} bytes, over the 10 MB limit")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:
        raise ImageProblem(f"image_url is not a readable image ({type(err).__name__})") from None
    if image.format not in ACCEPTED_TYPES:
        raise ImageProblem(f"image_url is a {image.format} image, which is not accepted ({accepted})")
    return image


def _seeded_light(image: Image.Image, seed: int) -> Image.Image:
    """
    A faint ramp of light across the image, its angle and depth drawn from ``seed``.

    The same offset goes to every channel, so a black and white edit stays grey.
    """
    rng = random.Random(seed)
    angle, depth = rng.uniform(0, 360), rng.uniform(8, 20)
    ramp = Image.linear_gradient("L").rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=128)
    ramp = ramp.resize(image.size, Image.Resampling.BILINEAR).point(lambda v: 128 + round((v - 128) * depth / 128))
    return ImageChops.add(image, Image.merge("RGB", (ramp, ramp, ramp)), offset=-128)


def edit_image(
    data: bytes,
    prompt: str,
    *,
    strength: float = 0.8,
    seed: int = 0,
    output_format: str = "png",
    content_type: str | None = None,
) -> bytes:
    """
    Apply the prompt's effect, lit by ``seed``, and blend it with the original by ``strength``.

    :return: the encoded result, the same size as the source.
    :raises ImageProblem: when the source is not an image the model accepts.
    """
    source = open_image(data, content_type).convert("RGB")
    edited = _seeded_light(choose_effect(prompt)(source).convert("RGB"), seed)
    result = Image.blend(source, edited, float(strength))
    pillow_format = OUTPUT_FORMATS[output_format][0]
    buffer = io.BytesIO()
    result.save(buffer, format=pillow_format, **({"quality": 90} if pillow_format == "JPEG" else {}))
    return buffer.getvalue()
