"""Image decoding and the per-model preprocessing, run in a thread pool (OpenCV releases the GIL)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import InvalidImage
from app.model_config import Preprocessing

_INTERPOLATION = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
}
SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP"}


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP bytes to an RGB uint8 HWC array, or raise ``InvalidImage``."""
    if not data:
        raise InvalidImage("empty image")
    # Read only the header first, so a decompression bomb is refused before it is expanded.
    try:
        with Image.open(io.BytesIO(data)) as header:
            fmt, (width, height) = header.format, header.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidImage("cannot decode image: not a JPEG, PNG, WebP or BMP file") from None
    if fmt not in SUPPORTED_FORMATS:
        raise InvalidImage(f"unsupported image format {fmt}; send JPEG, PNG, WebP or BMP")
    if width * height > max_pixels:
        raise InvalidImage(f"image is {width}x{height}, more than {max_pixels} pixels")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidImage("cannot decode image: the file is corrupt or truncated")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def preprocess(rgb: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Resize the shorter side, center-crop, normalise; returns float32 CHW."""
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
