"""The detection kind's pure logic: boxes per image from bbox_num, REST boxes, which outputs are which."""

from __future__ import annotations

import numpy as np
import pytest

from pdserve.errors import ModelLoadError, PdserveError
from pdserve.kinds.detection import boxes_json
from pdserve.kinds.detection_worker import detection_outputs, split_boxes
from pdserve.runtime.signature import Signature, TensorSpec

ROWS = np.array(
    [
        [1, 0.9, 10, 20, 30, 40],
        [0, 0.3, 1, 2, 3, 4],
        [2, 0.7, 5, 6, 7, 8],
        [-1, 0.99, 0, 0, 0, 0],  # exports pad an image without boxes with class -1
    ],
    np.float32,
)


def test_boxes_are_split_by_bbox_num() -> None:
    parts = split_boxes(ROWS, np.array([1, 0, 3], np.int32), 3)
    assert [len(p) for p in parts] == [1, 0, 3]
    np.testing.assert_array_equal(parts[2], ROWS[1:])


@pytest.mark.parametrize("counts", [[1, 1], [2, 2, 2], [5, -1, 0]])
def test_counts_that_do_not_add_up_fail_the_batch(counts: list[int]) -> None:
    with pytest.raises(PdserveError, match="bbox_num"):
        split_boxes(ROWS, np.array(counts), 3)


def test_boxes_over_the_threshold_best_first_with_labels() -> None:
    out = boxes_json(ROWS, 0.5, ["person", "bicycle", "car"])
    assert [(b["class_id"], b["label"]) for b in out] == [(1, "bicycle"), (2, "car")]
    assert out[0]["box"] == [10.0, 20.0, 30.0, 40.0]
    assert out[0]["score"] == pytest.approx(0.9)
    assert [b["label"] for b in boxes_json(ROWS, 0.0, None)] == ["1", "2", "0"]


def test_outputs_are_found_by_shape_not_name() -> None:
    signature = Signature(
        (TensorSpec("image", "float32", (-1, 3, 640, 640)),),
        (TensorSpec("fetch_name_1", "int32", (-1,)), TensorSpec("fetch_name_0", "float32", (-1, 6))),
    )
    bbox, bbox_num = detection_outputs(signature)
    assert (bbox.name, bbox_num.name) == ("fetch_name_0", "fetch_name_1")
    with pytest.raises(ModelLoadError, match="kind: tensor"):
        detection_outputs(Signature(signature.inputs, (TensorSpec("logits", "float32", (-1, 1000)),)))
