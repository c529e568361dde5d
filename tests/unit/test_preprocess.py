from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from pdserve.errors import ImageTooLarge, InvalidImage
from pdserve.model_config import Preprocessing
from pdserve.pipeline.hostile import bomb, encode_with_pillow
from pdserve.preprocess import (
    Normalizer,
    crop,
    decode_image,
    jpeg_reduction,
    load_and_crop,
    load_and_preprocess,
    preprocess,
)
from pdserve.runtime.transport import CROP, TENSOR, BatchBuffers

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
    with pytest.raises(ImageTooLarge, match="100x100, more than 9999 pixels"):
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


# ---- hostile and unusual images ---------------------------------------------------------------

_pillow = encode_with_pillow


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_decompression_bombs_are_refused_from_the_header(fmt: str) -> None:
    data = bomb(fmt)
    assert len(data) < 2000
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=40_000_000)


def test_a_bomb_past_pillows_own_bound_is_still_image_too_large() -> None:
    # 40000 x 40000 is past Pillow's DecompressionBombError threshold, whatever our bound says.
    with pytest.raises(ImageTooLarge):
        decode_image(bomb("PNG"), max_pixels=10**12)


def _rgb(h: int = 30, w: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


UNUSUAL = {
    "grayscale": lambda: _pillow(_rgb().convert("L"), "PNG"),
    "16-bit": lambda: _pillow(Image.fromarray(np.full((30, 40), 40000, np.uint16)), "PNG"),
    "alpha": lambda: _pillow(_rgb().convert("RGBA"), "PNG"),
    "gray+alpha": lambda: _pillow(_rgb().convert("LA"), "PNG"),
    "palette": lambda: _pillow(_rgb().convert("P"), "PNG"),
    "1-bit": lambda: _pillow(_rgb().convert("1"), "BMP"),
    "cmyk-jpeg": lambda: _pillow(_rgb().convert("CMYK"), "JPEG"),
    "grayscale-jpeg": lambda: _pillow(_rgb().convert("L"), "JPEG"),
    "webp-alpha": lambda: _pillow(_rgb().convert("RGBA"), "WEBP"),
    "1x1": lambda: _pillow(_rgb(1, 1), "PNG"),
}


@pytest.mark.parametrize("kind", sorted(UNUSUAL))
def test_unusual_but_valid_images_are_classified_not_rejected(kind: str) -> None:
    out = load_and_preprocess(UNUSUAL[kind](), SPEC, max_pixels=10_000)
    assert out.shape == (3, 224, 224)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize(("h", "w"), [(1, 20_000), (20_000, 1), (3, 9_000)])
def test_extremely_long_images_are_trimmed_before_resizing(h: int, w: int) -> None:
    # Resized whole, 1 x 20000 would be 256 x 5,120,000 pixels (about 4 GB) before the crop.
    rgb = np.full((h, w, 3), 77, np.uint8)
    out = preprocess(rgb, SPEC)
    assert out.shape == (3, 224, 224)
    assert np.allclose(out, (77 - 127) / 128)


def test_ordinary_aspect_ratios_are_not_trimmed() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (300, 1000, 3), dtype=np.uint8)  # 3.3:1, under the bound
    resized = cv2.resize(rgb, (853, 256), interpolation=cv2.INTER_LINEAR)
    top, left = (256 - 224) // 2, (853 - 224) // 2
    expected = (resized[top : top + 224, left : left + 224].astype(np.float32) - 127) / 128
    assert np.allclose(preprocess(rgb, SPEC), expected.transpose(2, 0, 1))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_invalid(fmt: str) -> None:
    data = _pillow(_rgb(64, 64), fmt)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], max_pixels=10_000)


def test_camera_mpo_jpegs_are_accepted() -> None:
    data = _pillow(_rgb(), "MPO")
    assert decode_image(data, max_pixels=10_000).shape == (30, 40, 3)


@pytest.mark.parametrize(
    ("fmt", "size", "factor"),
    [
        ("JPEG", (4032, 3024), 8),  # a phone photo: 1/8 is 504x378, shorter side still >= 256
        ("JPEG", (1600, 1200), 4),
        ("JPEG", (600, 520), 2),
        ("JPEG", (600, 511), 1),  # under twice 256: every pixel
        ("MPO", (4032, 3024), 8),
        ("PNG", (4032, 3024), 1),  # only JPEG decoders scale in the DCT domain
    ],
)
def test_jpeg_reduction_keeps_the_shorter_side_at_least_the_resize(
    fmt: str, size: tuple[int, int], factor: int
) -> None:
    assert jpeg_reduction(fmt, *size, min_short_side=256) == factor
    assert jpeg_reduction(fmt, *size, min_short_side=None) == 1


def test_large_jpeg_is_decoded_at_reduced_scale_unless_turned_off() -> None:
    rng = np.random.default_rng(0)
    photo = encode(rng.integers(0, 255, (1100, 1300, 3), np.uint8), ".jpg")
    assert decode_image(photo, 10**8, min_short_side=256).shape == (275, 325, 3)  # 1/4
    assert decode_image(photo, 10**8).shape == (1100, 1300, 3)
    off = SPEC.model_copy(update={"reduced_jpeg_decode": False})
    assert load_and_crop(photo, SPEC, 10**8).shape == load_and_crop(photo, off, 10**8).shape == (224, 224, 3)


def test_serving_split_equals_the_offline_preprocessing() -> None:
    # The HTTP process crops (uint8), the worker normalises a whole batch: same numbers as preprocess().
    rng = np.random.default_rng(1)
    spec = Preprocessing(resize_shorter=40, crop=32)  # ImageNet mean/std: not powers of two
    images = [rng.integers(0, 255, (50 + i, 60, 3), np.uint8) for i in range(3)]
    crops = np.stack([crop(rgb, spec) for rgb in images])
    assert crops.dtype == np.uint8
    assert crops.shape == (3, 32, 32, 3)
    batch = Normalizer(spec)(crops)
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    for rgb, row in zip(images, batch, strict=True):
        np.testing.assert_allclose(row, preprocess(rgb, spec), rtol=1e-6, atol=1e-6)
    legacy = (crops[0].astype(np.float32) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    np.testing.assert_allclose(batch[0], legacy.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


def test_batch_buffers_carry_crops_and_tensors_side_by_side() -> None:
    buffers = BatchBuffers(4, (3, 8, 8))
    try:
        kinds = buffers.write([np.ones((8, 8, 3), np.uint8), np.ones((3, 8, 8), np.float32)])
        assert kinds == CROP + TENSOR
        assert buffers.crop_shm.size >= 4 * 3 * 8 * 8
        assert buffers.input_shm.size >= 4 * 3 * 8 * 8 * 4
    finally:
        buffers.close()
        buffers.close()  # idempotent
