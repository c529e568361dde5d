"""kind ocr's pixel work as pure functions (issue 21)."""

from __future__ import annotations

import cv2
import numpy as np

from pdserve.kinds import ocr_geometry as geo


def test_detection_sizes_are_multiples_of_32_within_the_side_limit() -> None:
    assert geo.det_size(1000, 2000, 960, "max") == (480, 960)
    assert geo.det_size(100, 200, 960, "max") == (96, 192)
    assert geo.det_size(100, 200, 736, "min") == (736, 1472)
    assert geo.det_size(10, 10, 960, "max") == (32, 32)
    # PaddleOCR truncates the scaled side, then rounds half to even: 621 x 736/307 = 1488.8 -> 1488 -> 1472
    assert geo.det_size(307, 621, 736, "min") == (736, 1472)


def test_ctc_merges_repeats_drops_blanks_and_scores_what_it_keeps() -> None:
    chars = ["", "a", "b"]
    steps = [1, 1, 0, 1, 2, 2, 0]  # a a _ a b b _ -> "aab"
    probs = np.full((len(steps), 3), 0.05, np.float32)
    for t, c in enumerate(steps):
        probs[t, c] = 0.9
    text, score = geo.ctc_decode(probs, chars)
    assert text == "aab"
    assert abs(score - 0.9) < 1e-6
    assert geo.ctc_decode(np.eye(3, dtype=np.float32)[[0, 0]], chars) == ("", 0.0)


def test_db_finds_a_bright_rectangle_and_scales_it_to_the_original() -> None:
    prob = np.zeros((64, 128), np.float32)
    prob[20:40, 10:100] = 0.95
    (box,) = geo.db_boxes(prob, (128, 256), 0.3, 0.5, 1.5, 1000)
    x0, y0, x1, y1 = box[:, 0].min(), box[:, 1].min(), box[:, 0].max(), box[:, 1].max()
    assert x0 < 20 < 200 < x1  # grown back out (unclip), in the original's pixels (2x)
    assert y0 < 40 < 80 < y1


def test_reading_order_is_rows_then_left_to_right() -> None:
    def box(x: float, y: float) -> np.ndarray:
        return np.array([[x, y], [x + 50, y], [x + 50, y + 20], [x, y + 20]], np.float32)

    ordered = geo.reading_order([box(200, 103), box(10, 100), box(10, 50)])
    assert [(int(b[0][0]), int(b[0][1])) for b in ordered] == [(10, 50), (10, 100), (200, 103)]


def test_a_tilted_box_is_cropped_upright() -> None:
    image = np.full((100, 200, 3), 255, np.uint8)
    cv2.rectangle(image, (40, 40), (160, 60), (0, 0, 0), -1)
    crop = geo.crop_line(image, np.array([[40, 40], [160, 40], [160, 60], [40, 60]], np.float32))
    assert crop.shape[:2] == (20, 120)
    assert crop.mean() < 40


def test_recognition_inputs_pad_to_the_bucket_on_the_right() -> None:
    crop = np.full((24, 60, 3), 255, np.uint8)
    x = geo.rec_input(crop, 48, 160)
    assert x.shape == (3, 48, 160)
    assert geo.rec_width(crop, 48) == 120
    assert np.all(x[:, :, 120:] == 0)
    assert np.allclose(x[:, :, :120], 1.0)


def test_paddleocr_padding_takes_an_images_lines_by_aspect_ratio_in_groups_to_the_widest() -> None:
    crops = [np.zeros((48, w, 3), np.uint8) for w in (100, 480, 200, 960, 50, 300, 2000)]
    # sorted by ratio: 50, 100, 200, 300, 480, 960 | 2000; each group to its widest, never below 320
    assert geo.paddleocr_widths(crops, 48, 320, 6) == [960, 960, 960, 960, 960, 960, 2000]
    assert geo.paddleocr_widths(crops[:3], 48, 320, 6) == [480, 480, 480]
    assert geo.paddleocr_widths([np.zeros((24, 40, 3), np.uint8)], 48, 320, 6) == [320]
    assert geo.paddleocr_widths([np.zeros((24, 400, 3), np.uint8)], 48, 320, 6) == [800]  # height 48: 2x
    assert geo.paddleocr_widths([], 48, 320, 6) == []
