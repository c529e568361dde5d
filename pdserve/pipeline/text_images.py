"""Images with known text for kind ocr's tests and benchmark, rendered with a real font (Pillow's
built-in FreeType font, the same on every machine) at several sizes, angles and lengths."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

# RapidOCR's settings (its config.yaml), so that both pipelines make the same decisions.
AS_REFERENCE = {
    "det_limit_side_len": 736,
    "det_limit_type": "min",
    "det_mean": [0.5, 0.5, 0.5],
    "det_std": [0.5, 0.5, 0.5],
    "det_db_box_thresh": 0.5,
    "det_db_unclip_ratio": 1.6,
    "det_use_dilation": True,
}

# (lines, font size, angle in degrees): English, digits, punctuation, short and long lines.
CASES = [
    (["Hello pdserve"], 40, 0),
    (["Invoice 4711", "Total 98.50 EUR"], 32, 0),
    (["The quick brown fox jumps over the lazy dog"], 28, 0),
    (["2026-12-07 15:29:17"], 36, 0),
    (["PaddleOCR", "serving", "batched"], 44, 0),
    (["Order number 0012345678"], 24, 0),
    (["Tilted text here"], 40, 4),
    (["Another slant 321"], 40, -5),
    (["Upside down line"], 40, 180),
    (["A", "short", "list", "of", "words"], 30, 0),
    (["Price: 19.99 / 24.99"], 34, 0),
    (["Small print 123"], 20, 0),
]


def render(lines: list[str], size: int, angle: float) -> bytes:
    font = ImageFont.load_default(size=size)  # Pillow's built-in FreeType font: the same on every machine
    width = max(int(font.getlength(line)) for line in lines) + 2 * size
    height = int(len(lines) * size * 1.8) + size
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((size, size // 2 + i * int(size * 1.8)), line, fill=(20, 20, 20), font=font)
    if angle:
        image = image.rotate(angle, expand=True, fillcolor="white", resample=Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()
