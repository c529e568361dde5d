"""Images with known text for kind ocr's tests and benchmark, rendered with a real font (Pillow's
built-in FreeType font, the same on every machine) at several sizes, angles and lengths.

``CASES``: 12 hand-written pages (21 lines), the benchmark's images. ``MORE_CASES``: 48 pages
generated from a fixed seed (words, numbers, dates, prices, codes, punctuation; 18-48 px; level,
tilted or upside down), which the e2e test adds for line agreement: ``CASES`` alone is too few
lines for a percentage. The recogniser's width buckets were chosen on ``CASES``' lines, never on
these.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from typing import Any

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


# fmt: off
_WORDS = (
    "the", "order", "total", "invoice", "paid", "due", "date", "amount", "account", "number", "customer", "service",
    "delivery", "address", "street", "city", "station", "platform", "train", "departs", "arrives", "gate",
    "seat", "coffee", "tea", "sugar", "milk", "bread", "price", "each", "box", "weight", "height", "width",
    "open", "closed", "monday", "friday", "today", "tomorrow", "model", "batch", "server", "request", "line",
    "text", "image", "page", "note", "room", "floor", "exit", "north", "south", "east", "west",
)
# fmt: on
_PUNCTUATION = (",", ".", ":", ";", "!", "?", "-", "/", "(", ")", "%", "#", "+", "&")


def _token(rng: random.Random) -> str:
    """A word, or a number in one of the forms printed text has."""
    kind = rng.random()
    if kind < 0.55:
        word = rng.choice(_WORDS)
        return word.capitalize() if rng.random() < 0.3 else word.upper() if rng.random() < 0.05 else word
    forms = (
        lambda: str(rng.randint(0, 99999)),
        lambda: f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
        lambda: f"20{rng.randint(10, 30)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        lambda: f"{rng.randint(1, 99)}%",
        lambda: f"{rng.choice('ABCDEFGHKMNPRSTX')}{rng.choice('ABCDEFGHKMNPRSTX')}-{rng.randint(100, 9999)}",
        lambda: f"No.{rng.randint(1, 999)}",
        lambda: f"({rng.randint(1, 99)})",
    )
    return rng.choice(forms)()


def _line(rng: random.Random) -> str:
    words = [_token(rng) for _ in range(rng.choice((1, 1, 2, 3, 3, 4, 5, 6, 8)))]
    if rng.random() < 0.35:
        at = rng.randrange(len(words))
        words[at] += rng.choice(_PUNCTUATION)
    return " ".join(words)


def more_cases(pages: int = 48, seed: int = 21) -> list[tuple[list[str], int, float]]:
    """Pages of 1-4 generated lines: the same pages for the same seed on every machine."""
    rng = random.Random(seed)
    cases = []
    for _ in range(pages):
        lines = [_line(rng) for _ in range(rng.choice((1, 1, 2, 2, 3, 4)))]
        size = rng.choice((18, 22, 26, 30, 34, 40, 48))
        turn = rng.random()
        angle = 180.0 if turn < 0.1 else float(rng.choice((-6, -4, -2, 2, 4, 6))) if turn < 0.3 else 0.0
        cases.append((lines, size, angle))
    return cases


MORE_CASES = more_cases()


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


# ---- comparing what two pipelines read --------------------------------------------------------------
def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def char_accuracy(found: list[str], truth: list[str]) -> float:
    """1 - edit distance / truth length, spaces ignored (PP-OCRv4's Chinese model often drops them)."""
    got, want = "".join(found).replace(" ", ""), "".join(truth).replace(" ", "")
    return max(0.0, 1 - edit_distance(got, want) / len(want))


def _bounds(box: Any) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in box], [p[1] for p in box]
    return min(xs), min(ys), max(xs), max(ys)


def iou(a: Any, b: Any) -> float:
    ax0, ay0, ax1, ay1 = _bounds(a)
    bx0, by0, bx1, by1 = _bounds(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union else 0.0


@dataclass
class Agreement:
    """How many of a reference's lines another pipeline read the same (the line it found at the same
    place, IoU > 0.5), and the same apart from spaces; ``differ``: (reference's text, ours or None)."""

    total: int = 0
    equal: int = 0
    equal_but_spaces: int = 0
    differ: list[tuple[str, str | None]] = field(default_factory=list)


def line_agreement(ours: list[list[dict[str, Any]]], theirs: list[list[dict[str, Any]]]) -> Agreement:
    """Per page, each of ``theirs``' lines (``{"box", "text"}``) against the best-placed of ``ours``."""
    agreed = Agreement()
    for our_lines, their_lines in zip(ours, theirs, strict=True):
        for line in their_lines:
            agreed.total += 1
            match = max(our_lines, key=lambda o: iou(o["box"], line["box"]), default=None)
            found = match["text"] if match is not None and iou(match["box"], line["box"]) > 0.5 else None
            if found is not None and found.strip() == line["text"].strip():
                agreed.equal += 1
            else:
                agreed.differ.append((line["text"], found))
            if found is not None and found.replace(" ", "") == line["text"].replace(" ", ""):
                agreed.equal_but_spaces += 1
    return agreed


def read_pages(url: str, model: str, pages: list[bytes], clients: int) -> list[Any]:
    """Every page posted to a server's ``/predict?model=``, ``clients`` at a time (lines of concurrent
    pages share the recogniser's batches): the ``httpx`` responses, in the pages' order."""
    import asyncio

    import httpx

    async def all_pages() -> list[httpx.Response]:
        gate = asyncio.Semaphore(clients)

        async def post(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
            async with gate:
                return await client.post(f"/predict?model={model}", content=data, headers={"content-type": "image/png"})

        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            return list(await asyncio.gather(*(post(client, data) for data in pages)))

    return asyncio.run(all_pages())


def reference_lines(engine: Any, pages: list[bytes]) -> list[list[dict[str, Any]]]:
    """A RapidOCR engine's lines (``{"box", "text"}``) on every page, one page at a time."""
    import cv2
    import numpy as np

    found = []
    for data in pages:
        result, _ = engine(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
        found.append([{"box": box, "text": text} for box, text, _score in result or []])
    return found
