"""
Pictures for the catalog demo: simple product images, and the before/after contact sheet.

Needs Pillow (the ``emulator`` extra). Output is deterministic: the same arguments give the same
bytes, so the demo's checksums are stable from run to run.
"""

from __future__ import annotations

import io
import zlib

from PIL import Image, ImageColor, ImageDraw, ImageFont

PRODUCT_SIZE = (320, 240)
THUMB_SIZE = (240, 180)
LABEL_HEIGHT = 44
MARGIN = 12


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def draw_product(name: str, background: str, colour: str) -> bytes:
    """Return a product shot: a shaded shape on a gradient backdrop, with the product's name."""
    width, height = PRODUCT_SIZE
    image = Image.new("RGB", PRODUCT_SIZE, background)
    draw = ImageDraw.Draw(image)
    for row in range(height):  # a soft vertical gradient, darker at the floor
        shade = int(40 * row / height)
        base = ImageColor.getrgb(background)
        draw.line([(0, row), (width, row)], fill=tuple(max(0, channel - shade) for channel in base))
    variant = zlib.crc32(name.encode()) % 3  # a different silhouette per product
    box = (width * 0.25, height * 0.22, width * 0.75, height * 0.78)
    if variant == 0:
        draw.rounded_rectangle(box, radius=28, fill=colour, outline="#222222", width=3)
    elif variant == 1:
        draw.ellipse(box, fill=colour, outline="#222222", width=3)
    else:
        draw.polygon([(width * 0.5, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour, outline="#222222")
    draw.ellipse((width * 0.3, height * 0.8, width * 0.7, height * 0.88), fill="#8a8a8a")
    draw.text((MARGIN, MARGIN), name, fill="#222222", font=ImageFont.load_default(size=20))
    return _png(image)


def contact_sheet(rows: list[tuple[str, str, bytes, bytes]]) -> bytes:
    """
    Return a grid with one row per product: its label, the source image, and the edited image.

    :param rows: ``(name, prompt, source image bytes, edited image bytes)`` per product.
    """
    thumb_w, thumb_h = THUMB_SIZE
    width = MARGIN * 3 + thumb_w * 2
    row_height = LABEL_HEIGHT + thumb_h + MARGIN
    sheet = Image.new("RGB", (width, MARGIN * 2 + 28 + row_height * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    title_font, label_font = ImageFont.load_default(size=18), ImageFont.load_default(size=13)
    draw.text((MARGIN, MARGIN), "before", fill="#555555", font=title_font)
    draw.text((MARGIN * 2 + thumb_w, MARGIN), "after", fill="#555555", font=title_font)
    top = MARGIN + 28
    for name, prompt, before, after in rows:
        draw.text((MARGIN, top + 4), name, fill="#111111", font=label_font)
        draw.text((MARGIN, top + 22), f"prompt: {prompt}", fill="#666666", font=label_font)
        for column, data in enumerate((before, after)):
            thumb = Image.open(io.BytesIO(data)).convert("RGB")
            thumb.thumbnail(THUMB_SIZE)
            sheet.paste(thumb, (MARGIN + column * (thumb_w + MARGIN), top + LABEL_HEIGHT))
        top += row_height
    return _png(sheet)
