"""
The pictures themselves: an edit (a Pillow effect chosen by the prompt's words), or a drawing from a prompt.

Both are deterministic: the same inputs always give the same bytes (no timestamps or other metadata
are written), so tests and demos can compare checksums.
"""

from __future__ import annotations

import functools
import hashlib
import io
import mimetypes
import random
from collections.abc import Callable

from PIL import Image, ImageChops, ImageColor, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

#: Pillow format name → MIME type, for the source types the model accepts.
ACCEPTED_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: output_format → (Pillow format, MIME type, file extension)
OUTPUT_FORMATS = {"png": ("PNG", "image/png", "png"), "jpeg": ("JPEG", "image/jpeg", "jpg")}
#: image_size of a drawing → (width, height): small, so tests stay fast.
IMAGE_SIZES = {
    "square": (256, 256),
    "square_hd": (512, 512),
    "portrait_4_3": (192, 256),
    "portrait_16_9": (144, 256),
    "landscape_4_3": (256, 192),
    "landscape_16_9": (256, 144),
}

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
    """Return the first effect whose words appear in ``prompt`` (case-insensitive), else a contrast boost."""
    lowered = prompt.lower()
    for words, effect in EFFECTS:
        if any(word in lowered for word in words):
            return effect
    return _contrast


def sniff_mime(data: bytes, file_name: str | None = None) -> str:
    """Return the MIME type of a file, from the image format Pillow reads in it, else from its name's extension."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Image.MIME[image.format or ""]
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
    Return a faint ramp of light across the image, its angle and depth drawn from ``seed``.

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
    return encode(Image.blend(source, edited, float(strength)), output_format)


def encode(image: Image.Image, output_format: str) -> bytes:
    """``image`` as the bytes of an ``output_format`` file (a key of :data:`OUTPUT_FORMATS`), without metadata."""
    pillow_format = OUTPUT_FORMATS[output_format][0]
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **({"quality": 90} if pillow_format == "JPEG" else {}))
    return buffer.getvalue()


#: Words of the prompt shown on a drawing, at most.
CAPTION_WORDS = 4
CAPTION_CHARACTERS = 32


def _colour_words(prompt: str) -> list[tuple[int, int, int]]:
    """Return the colours the prompt names (``red``, ``teal``...), in order, as RGB."""
    colours = []
    for word in prompt.lower().split():
        name = word.strip(".,;:!?\"'()[]")
        if name in ImageColor.colormap:
            colours.append(ImageColor.getrgb(name)[:3])
    return colours


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def caption(prompt: str) -> str:
    """Return the prompt's first words, as a drawing shows them."""
    words = " ".join(prompt.split()[:CAPTION_WORDS])
    return words if len(words) <= CAPTION_CHARACTERS else words[: CAPTION_CHARACTERS - 1] + "…"


def draw_image(
    prompt: str,
    *,
    image_size: str = "square",
    seed: int = 0,
    output_format: str = "png",
    negative_prompt: str = "",
) -> bytes:
    """
    Return a picture drawn from the prompt: a two-colour gradient, a few shapes, and the prompt's first words.

    Everything is drawn from a hash of ``prompt``, ``negative_prompt`` and ``seed``, so other inputs
    give another picture and the same ones give the same bytes. Colours the prompt names (``a red
    fox in a blue field``) become the gradient's ends.

    :param image_size: a key of :data:`IMAGE_SIZES`.
    :return: the encoded picture.
    """
    width, height = IMAGE_SIZES[image_size]
    digest = hashlib.sha256("\0".join((prompt, negative_prompt, str(seed))).encode()).digest()
    rng = random.Random(digest)
    named = _colour_words(prompt)
    start = named[0] if named else _random_colour(rng)
    end = named[1] if len(named) > 1 else _random_colour(rng)

    # 256 x 256 gradients, turned one of eight ways, then stretched to the size
    ramp = Image.linear_gradient("L")
    turn = rng.randrange(len(Image.Transpose) + 1)
    ramp = ramp.transpose(list(Image.Transpose)[turn - 1]) if turn else ramp
    ramp = Image.blend(ramp, ImageOps.invert(Image.radial_gradient("L")), rng.uniform(0.1, 0.5))
    ramp = ramp.resize((width, height), Image.Resampling.BILINEAR)
    image = ImageOps.colorize(ramp, start, end).convert("RGBA")

    shapes = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    for _ in range(rng.randint(3, 6)):
        x, y = rng.randrange(width), rng.randrange(height)
        radius = rng.randint(min(width, height) // 10, min(width, height) // 3)
        fill = (*_random_colour(rng), rng.randint(90, 200))
        kind = rng.choice(("ellipse", "rectangle", "triangle"))
        if kind == "ellipse":
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
        elif kind == "rectangle":
            draw.rectangle((x - radius, y - radius // 2, x + radius, y + radius // 2), fill=fill)
        else:
            draw.polygon([(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)], fill=fill)
    image = Image.alpha_composite(image, shapes)

    text = caption(prompt)
    if text:  # white on a dark band along the bottom
        font = _font(max(10, min(height // 14, width // 12)))
        band = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(band)
        margin = max(4, height // 40)
        _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        band_top = height - (bottom - top) - 2 * margin
        draw.rectangle((0, band_top, width, height), fill=(0, 0, 0, 140))
        draw.text((margin, band_top + margin - top), text, font=font, fill=(255, 255, 255, 255))
        image = Image.alpha_composite(image, band)
    return encode(image.convert("RGB"), output_format)
