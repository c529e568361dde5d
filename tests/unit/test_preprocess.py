from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidImage
from app.model_config import Preprocessing
from app.preprocess import decode_image, load_and_preprocess, preprocess

SPEC = Preprocessing(resize_shorter=256, crop=224, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


def encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".jpg"])
def test_decodes_to_rgb(ext: str) -> None:
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 250
    out = decode_image(encode(red, ext), max_pixels=10_000)
    assert out.shape == (20, 30, 3)
    assert out[..., 0].mean() > 200
    assert out[..., 2].mean() < 30


def test_grayscale_and_alpha_become_three_channels() -> None:
    ok, gray = cv2.imencode(".png", np.full((8, 8), 90, np.uint8))
    assert ok
    assert decode_image(gray.tobytes(), 1000).shape == (8, 8, 3)
    ok, rgba = cv2.imencode(".png", np.full((8, 8, 4), 90, np.uint8))
    assert ok
    assert decode_image(rgba.tobytes(), 1000).shape == (8, 8, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image"),
        (b"not an image at all", "not a JPEG, PNG, WebP or BMP"),
    ],
)
def test_undecodable_input_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_image(data, max_pixels=10_000)


def test_formats_other_than_the_four_are_refused_by_name() -> None:
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    with pytest.raises(InvalidImage, match="unsupported image format GIF"):
        decode_image(gif.getvalue(), max_pixels=10_000)


def test_truncated_jpeg_is_refused() -> None:
    data = encode(np.full((64, 64, 3), 128, np.uint8), ".jpg")
    with pytest.raises(InvalidImage):
        decode_image(data[:40], max_pixels=10_000)


def test_oversized_image_is_refused_before_decoding() -> None:
    data = encode(np.zeros((100, 100, 3), np.uint8), ".png")
    with pytest.raises(InvalidImage, match="100x100, more than 9999 pixels"):
        decode_image(data, max_pixels=9_999)


def test_resize_shorter_side_center_crop_and_normalise() -> None:
    # A 300x600 image whose left and right quarters are black and middle is white:
    # after resizing to 256x512 and cropping 224 from the centre, everything left is white.
    rgb = np.zeros((300, 600, 3), np.uint8)
    rgb[:, 150:450] = 255
    out = preprocess(rgb, SPEC)
    assert out.shape == (3, 224, 224)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, (255 - 127) / 128)


def test_channels_are_normalised_separately() -> None:
    spec = Preprocessing(mean=(10.0, 20.0, 30.0), std=(1.0, 2.0, 5.0))
    rgb = np.full((256, 256, 3), 50, np.uint8)
    out = preprocess(rgb, spec)
    assert [float(out[c].mean()) for c in range(3)] == [40.0, 15.0, 4.0]


def test_small_images_are_upscaled_to_the_crop() -> None:
    out = load_and_preprocess(encode(np.zeros((10, 7, 3), np.uint8), ".png"), SPEC, max_pixels=10_000)
    assert out.shape == (3, 224, 224)
