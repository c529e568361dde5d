"""Image decoding and the per-model preprocessing, run in a thread pool (OpenCV releases the GIL)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage
from app.model_config import Preprocessing

_INTERPOLATION = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
}
# MPO is a camera JPEG carrying extra pictures (stereo, depth); its first frame is a plain JPEG.
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP"}
# The resized image may be at most this many crops long: a 1x20000 image would otherwise become
# 256x5,120,000 pixels (4 GB) before the crop threw nearly all of it away.
MAX_RESIZED_ASPECT = 4


def image_size(data: bytes) -> tuple[str, int, int]:
    """Format, width and height from the header alone, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            return str(header.format), *header.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own bound (Image.MAX_IMAGE_PIXELS) tripped before ours could be checked.
        raise ImageTooLarge("image declares more pixels than Pillow will open; it is refused undecoded") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InvalidImage("cannot decode image: not a JPEG, PNG, WebP or BMP file") from None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP bytes to an RGB uint8 HWC array, or raise ``InvalidImage``.

    Grayscale, 16-bit, palette, alpha and CMYK images become 8-bit RGB (alpha is dropped)."""
    if not data:
        raise InvalidImage("empty image")
    # Read only the header first, so a decompression bomb is refused before it is expanded.
    fmt, width, height = image_size(data)
    if fmt not in SUPPORTED_FORMATS:
        raise InvalidImage(f"unsupported image format {fmt}; send JPEG, PNG, WebP or BMP")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height}, more than {max_pixels} pixels (PDSERVE_MAX_IMAGE_PIXELS)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidImage("cannot decode image: the file is corrupt or truncated")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _trim_long_side(rgb: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Cut an extremely long image to the centre part the crop can use, before resizing it."""
    height, width = rgb.shape[:2]
    short = min(height, width)
    keep = max(1, round(short * MAX_RESIZED_ASPECT * spec.crop / spec.resize_shorter))
    if height > keep:
        top = (height - keep) // 2
        rgb = rgb[top : top + keep]
    if width > keep:
        left = (width - keep) // 2
        rgb = rgb[:, left : left + keep]
    return rgb


def preprocess(rgb: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Resize the shorter side, center-crop, normalise; returns float32 CHW."""
    rgb = _trim_long_side(rgb, spec)
    height, width = rgb.shape[:2]
    scale = spec.resize_shorter / min(height, width)
    size = (max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale)))
    resized = cv2.resize(rgb, size, interpolation=_INTERPOLATION[spec.interpolation])
    top = (resized.shape[0] - spec.crop) // 2
    left = (resized.shape[1] - spec.crop) // 2
    crop = resized[top : top + spec.crop, left : left + spec.crop].astype(np.float32)
    crop -= np.asarray(spec.mean, np.float32)
    crop /= np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(crop.transpose(2, 0, 1))


def load_and_preprocess(data: bytes, spec: Preprocessing, max_pixels: int) -> np.ndarray:
    return preprocess(decode_image(data, max_pixels), spec)
