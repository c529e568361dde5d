"""The pixel work of PaddleOCR's pipeline, as pure functions of arrays: detection input sizing, the DB
post-process (probability map -> text boxes), reading order, cropping a box upright, the
recognition and direction inputs, and CTC greedy decoding.

PaddleOCR's deploy code (``ppocr/postprocess/db_postprocess.py``, ``tools/infer/predict_*.py``) is
the reference for what each step does; geometry goes through OpenCV, pyclipper and shapely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

# ---- detection input ------------------------------------------------------------------------------


def det_size(height: int, width: int, limit: int, limit_type: str) -> tuple[int, int]:
    """The detector's input size: scaled to the side limit, each side a multiple of 32 (at least 32)."""
    if limit_type == "max":
        ratio = limit / max(height, width) if max(height, width) > limit else 1.0
    else:
        ratio = limit / min(height, width) if min(height, width) < limit else 1.0
    # As PaddleOCR's DetResizeForTest: the scaled side truncated first, then rounded (half to even) to 32
    return max(round(int(height * ratio) / 32) * 32, 32), max(round(int(width * ratio) / 32) * 32, 32)


def det_input(
    bgr: np.ndarray, size: tuple[int, int], padded: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """``[1, 3, H, W]`` float32: resized to ``size``, normalised, zero-padded (bottom, right) to ``padded``."""
    height, width = size
    scaled: np.ndarray = cv2.resize(bgr, (width, height)).astype(np.float32) / 255.0
    resized = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    out = np.zeros((1, 3, *padded), np.float32)
    out[0, :, :height, :width] = resized.transpose(2, 0, 1)
    return out


# ---- DB post-process ------------------------------------------------------------------------------


def _mini_box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The minimum-area rectangle around ``points``, corners clockwise from top-left, and its shorter side."""
    rect = cv2.minAreaRect(points)
    corners = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = sorted(corners[:2], key=lambda p: p[1])
    right = sorted(corners[2:], key=lambda p: p[1])
    box = np.array([left[0], right[0], right[1], left[1]], np.float32)
    return box, min(rect[1])


def _box_score(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the box (PaddleOCR's "fast" score: over the box's polygon mask)."""
    h, w = prob.shape
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), np.uint8)
    shifted = box.copy()
    shifted[:, 0] -= xmin
    shifted[:, 1] -= ymin
    cv2.fillPoly(mask, [shifted.reshape(-1, 2).astype(np.int32)], 1)
    return float(cv2.mean(prob[ymin : ymax + 1, xmin : xmax + 1], mask)[0])


def _unclip(box: np.ndarray, ratio: float) -> np.ndarray:
    """Grow the shrunk text region back: offset by area * ratio / perimeter (the DB paper's rule)."""
    polygon = Polygon(box)
    distance = polygon.area * ratio / polygon.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    expanded = offset.Execute(distance)
    return np.array(expanded[0], np.float32) if expanded else np.zeros((0, 2), np.float32)


def db_boxes(
    prob: np.ndarray,
    original: tuple[int, int],
    thresh: float,
    box_thresh: float,
    unclip_ratio: float,
    max_candidates: int,
    dilation: bool = False,
    min_size: int = 3,
) -> list[np.ndarray]:
    """Text boxes (4 x 2, original image pixels) from the detector's probability map ``[H, W]``."""
    mask: np.ndarray = (prob > thresh).astype(np.uint8)
    if dilation:
        mask = np.asarray(cv2.dilate(mask, np.ones((2, 2), np.uint8)))
    contours, _ = cv2.findContours(mask * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    height, width = prob.shape
    src_h, src_w = original
    boxes = []
    for contour in contours[:max_candidates]:
        box, side = _mini_box(contour.reshape(-1, 2).astype(np.float32))
        if side < min_size:
            continue
        if _box_score(prob, box) < box_thresh:
            continue
        grown = _unclip(box, unclip_ratio)
        if len(grown) < 3:
            continue
        box, side = _mini_box(grown)
        if side < min_size + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] / width * src_w), 0, src_w)
        box[:, 1] = np.clip(np.round(box[:, 1] / height * src_h), 0, src_h)
        boxes.append(box)
    return boxes


def clean_boxes(boxes: list[np.ndarray], original: tuple[int, int]) -> list[np.ndarray]:
    """Corners clockwise from top-left, inside the image, and more than 3 pixels on each side."""
    height, width = original
    kept = []
    for box in boxes:
        ordered = _clockwise(box)
        ordered[:, 0] = np.clip(ordered[:, 0], 0, width - 1)
        ordered[:, 1] = np.clip(ordered[:, 1], 0, height - 1)
        w = int(np.linalg.norm(ordered[0] - ordered[1]))
        h = int(np.linalg.norm(ordered[0] - ordered[3]))
        if w > 3 and h > 3:
            kept.append(ordered)
    return kept


def _clockwise(pts: np.ndarray) -> np.ndarray:
    by_x = pts[np.argsort(pts[:, 0])]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1])]
    tr, br = right[np.argsort(right[:, 1])]
    return np.array([tl, tr, br, bl], np.float32)


def reading_order(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom, then left to right among boxes whose tops are within 10 pixels."""
    ordered = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(ordered) - 1):
        for j in range(i, -1, -1):
            if abs(ordered[j + 1][0][1] - ordered[j][0][1]) < 10 and ordered[j + 1][0][0] < ordered[j][0][0]:
                ordered[j], ordered[j + 1] = ordered[j + 1], ordered[j]
            else:
                break
    return ordered


# ---- lines -----------------------------------------------------------------------------------------


def crop_line(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box's pixels, straightened by a perspective transform; tall crops are turned to lie flat."""
    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(box.astype(np.float32), target)
    crop = cv2.warpPerspective(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if crop.shape[0] / max(crop.shape[1], 1) >= 1.5:
        crop = np.rot90(crop)
    return crop


def _normalised(resized: np.ndarray) -> np.ndarray:
    return ((resized.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def cls_input(crop: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``[3, H, W]``: the crop at the classifier's height, its width kept in proportion up to W, zero-padded."""
    _, height, width = shape
    resized_w = min(width, math.ceil(height * crop.shape[1] / crop.shape[0]))
    out = np.zeros(shape, np.float32)
    out[:, :, :resized_w] = _normalised(cv2.resize(crop, (resized_w, height)))
    return out


def rec_width(crop: np.ndarray, height: int) -> int:
    """The crop's width once resized to the recogniser's height, in proportion."""
    return max(1, math.ceil(height * int(crop.shape[1]) / max(int(crop.shape[0]), 1)))


def paddleocr_widths(crops: Sequence[np.ndarray], height: int, least: int, group: int) -> list[int]:
    """The width PaddleOCR's TextRecognizer pads each of one image's lines to: lines sorted by aspect
    ratio, taken ``group`` at a time, each group to its widest line's width at ``height``, never below
    ``least``."""
    ratios = [crop.shape[1] / float(crop.shape[0]) for crop in crops]
    order = np.argsort(np.array(ratios))  # PaddleOCR's own sort (not stable): ties fall in the same groups
    widths = [0] * len(crops)
    for start in range(0, len(crops), group):
        members = order[start : start + group]
        widest = max(least / height, *(ratios[i] for i in members))
        for i in members:
            widths[i] = int(height * widest)
    return widths


def rec_input(crop: np.ndarray, height: int, bucket: int) -> np.ndarray:
    """``[3, height, bucket]``: the crop at ``height``, in proportion (squeezed if wider), zero-padded."""
    resized_w = min(bucket, rec_width(crop, height))
    out = np.zeros((3, height, bucket), np.float32)
    out[:, :, :resized_w] = _normalised(cv2.resize(crop, (resized_w, height)))
    return out


def ctc_decode(probs: np.ndarray, characters: Sequence[str]) -> tuple[str, float]:
    """Greedy CTC over ``[T, classes]``: best class per step, repeats merged, blanks (class 0) dropped;
    the score is the mean probability of the characters kept."""
    best = probs.argmax(axis=1)
    scores = probs.max(axis=1)
    keep = best != 0
    keep[1:] &= best[1:] != best[:-1]
    text = "".join(characters[i] for i in best[keep] if i < len(characters))
    return text, float(scores[keep].mean()) if keep.any() else 0.0
