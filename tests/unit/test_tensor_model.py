from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from pdserve.kinds.tensor import TensorBatching, runs
from pdserve.model_config import ModelConfig, Ocr
from pdserve.pipeline.published import stage_warm_shapes
from pdserve.runtime.signature import Signature, TensorSpec, input_error

FEEDS = {"x": np.zeros((1, 3, 100, 100), np.float32)}

# The shape of Paddle's enforce text, as PP-OCRv4's detector raised it for a 100x100 input.
BROADCAST = """(InvalidArgument) Broadcast dimension mismatch. Operands could not be broadcast together with the \
shape of X = [1, 96, 7, 7] and the shape of Y = [1, 96, 8, 8]. Received [7] in X is not equal to [8] in Y at i:3.
  [Hint: Expected x_dims_array[i] == y_dims_array[i] || x_dims_array[i] <= 1 || y_dims_array[i] <= 1 == true, \
but received x_dims_array[i] == y_dims_array[i] || x_dims_array[i] <= 1 || y_dims_array[i] <= 1:0 != true:1.] \
(at /paddle/paddle/phi/kernels/funcs/common_shape.h:86)
  [operator < elementwise_add > error]"""


def test_an_input_error_becomes_one_short_line_naming_the_inputs() -> None:
    message = input_error(RuntimeError(BROADCAST), FEEDS)
    assert message == (
        "the model cannot run inputs x [1, 3, 100, 100] float32: Broadcast dimension mismatch. Operands could not "
        "be broadcast together with the shape of X = [1, 96, 7, 7] and the shape of Y = [1, 96, 8, 8]. Received [7] "
        "in X is not equal to [8] in Y at i:3 (operator elementwise_add)"
    )


def test_errors_of_the_model_or_runtime_are_not_blamed_on_the_input() -> None:
    assert input_error(RuntimeError("(PreconditionNotMet) Tensor holds no memory."), FEEDS) is None
    assert input_error(RuntimeError("(ResourceExhausted) Out of memory"), FEEDS) is None
    assert input_error(ValueError("something else"), FEEDS) is None


# ---- stacks at warmed batch sizes (tensor.warm_shapes) --------------------------------------------


def test_a_stack_on_a_cpu_is_split_into_warmed_sizes_without_padded_rows() -> None:
    assert runs(13, (1, 2, 4, 8), split=True) == [(8, 8), (4, 4), (1, 1)]
    assert runs(20, (1, 2, 4, 8), split=True) == [(8, 8), (8, 8), (4, 4)]
    assert runs(3, (4, 8), split=True) == [(3, 4)]  # no size fits below: padded up


def test_a_stack_on_a_gpu_is_padded_up_to_the_next_warmed_size() -> None:
    assert runs(5, (1, 2, 4, 8), split=False) == [(5, 8)]
    assert runs(19, (1, 2, 4, 8), split=False) == [(8, 8), (8, 8), (3, 4)]


class RowsPool:
    """A pool whose one instance doubles every row and records each run's (rows, padded rows)."""

    signature = Signature((TensorSpec("x", "float32", (-1, 2)),), (TensorSpec("y", "float32", (-1, 2)),))

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, tuple[int, ...]]] = []

    async def acquire(self) -> object:
        return object()

    async def run_on(self, inst: object, payload: dict[str, np.ndarray], size: int, padded: int) -> dict[str, Any]:
        self.calls.append((size, padded, payload["x"].shape))
        return {"y": payload["x"] * 2}


def _config(**fields: Any) -> ModelConfig:
    return ModelConfig(kind="tensor", max_batch_size=16, **fields)


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cpu", [(4, 4, (4, 2)), (2, 2, (2, 2)), (1, 1, (1, 2))]), ("gpu:0", [(4, 4, (4, 2)), (3, 4, (4, 2))])],
)
def test_stacked_requests_run_at_warmed_sizes_and_each_gets_its_own_rows(
    device: str, expected: list[tuple[int, int, tuple[int, ...]]]
) -> None:
    config = _config(batch_sizes=[1, 2, 4], tensor={"warm_shapes": [{"x": [2]}]}, device=device)
    pool = RowsPool()
    requests = [{"x": np.full((rows, 2), i, np.float32)} for i, rows in enumerate((2, 1, 2, 2))]
    results = asyncio.run(TensorBatching(config).run(pool, requests))  # type: ignore[arg-type]
    assert pool.calls == expected  # 7 rows: 4 + 2 + 1 on a CPU, 4 + 3 padded to 4 on a GPU
    for i, (request, result) in enumerate(zip(requests, results, strict=True)):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], request["x"] * 2, err_msg=f"request {i}")


def test_one_request_alone_runs_at_a_warmed_size_too_and_without_warm_shapes_as_it_came() -> None:
    request = {"x": np.ones((3, 2), np.float32)}
    pool = RowsPool()
    asyncio.run(TensorBatching(_config(tensor={"warm_shapes": [{"x": [2]}]})).run(pool, [request]))  # type: ignore[arg-type]
    assert [(size, padded) for size, padded, _ in pool.calls] == [(2, 2), (1, 1)]
    pool = RowsPool()
    asyncio.run(TensorBatching(_config()).run(pool, [request]))  # type: ignore[arg-type]
    assert [(size, padded) for size, padded, _ in pool.calls] == [(1, 1)]  # one request: counted as one item


def test_batch_sizes_of_a_tensor_model_may_stop_below_max_batch_size() -> None:
    assert _config(batch_sizes=[1, 2, 4, 8]).padded_batch_sizes == (1, 2, 4, 8)
    with pytest.raises(ValueError, match="largest of batch_sizes"):
        ModelConfig(kind="image", max_batch_size=16, batch_sizes=[1, 2, 4, 8])


def test_the_ocr_repository_warms_the_pipelines_width_buckets_on_the_recogniser() -> None:
    warm = stage_warm_shapes(Ocr(rec_widths=(100, 200), rec_image_height=32, rec_padding="buckets"))
    assert warm["ppocr_v4_rec"] == [{"x": [3, 32, 100]}, {"x": [3, 32, 200]}]
    # padded as PaddleOCR pads: its narrowest width too, the most common (every short line of a short group)
    paddleocr = stage_warm_shapes(Ocr(rec_widths=(100, 400), rec_image_height=32, rec_image_width=320))
    assert paddleocr["ppocr_v4_rec"] == [{"x": [3, 32, 100]}, {"x": [3, 32, 320]}, {"x": [3, 32, 400]}]
    assert warm["ppocr_mobile_v2_cls"] == [{"x": [3, 48, 192]}]
    assert stage_warm_shapes(Ocr(cls_model=None))["ppocr_mobile_v2_cls"] == []
    for shapes in warm.values():  # what the config file will hold is a valid tensor section
        ModelConfig(kind="tensor", tensor={"warm_shapes": shapes})
