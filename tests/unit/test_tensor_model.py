from __future__ import annotations

import numpy as np

from pdserve.runtime.signature import input_error

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
