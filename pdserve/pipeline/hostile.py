"""Hostile images for the tests and the soak run: small, well-formed files whose headers claim huge sizes."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode_with_pillow(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def bomb(fmt: str, side: int = 40_000) -> bytes:
    """A small, well-formed file whose header declares ``side`` x ``side`` pixels."""
    small = Image.new("RGB", (16, 16), (10, 20, 30))
    if fmt == "PNG":
        data = bytearray(encode_with_pillow(small, "PNG"))
        data[16:24] = struct.pack(">II", side, side)  # IHDR width, height
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR's CRC stays valid
        return bytes(data)
    if fmt == "JPEG":
        data = bytearray(encode_with_pillow(small, "JPEG"))
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)  # SOF0 height, width
        return bytes(data)
    if fmt == "BMP":
        data = bytearray(encode_with_pillow(small, "BMP"))
        data[18:26] = struct.pack("<ii", side, side)  # BITMAPINFOHEADER width, height
        return bytes(data)
    if fmt == "WEBP":  # lossless VP8L: 14-bit width-1 and height-1 after the 0x2f signature
        data = bytearray(encode_with_pillow(small, "WEBP", lossless=True))
        side = min(side, 1 << 14)
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        data[21:25] = (bits | (side - 1) | (side - 1) << 14).to_bytes(4, "little")
        return bytes(data)
    raise ValueError(f"no bomb for format {fmt!r}: PNG, JPEG, BMP or WEBP")
