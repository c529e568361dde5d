"""The offline commands' arguments (parsing only; tests/e2e/test_cli.py runs them)."""

from __future__ import annotations

from pdserve.cli import build_parser


def test_quantize_defaults_to_the_algorithm_measured_best() -> None:
    # hist changed the fewest answers of FP32 on the selection split; KL lost 27.6 points (BENCHMARKS.md)
    args = build_parser().parse_args(["quantize", "--model-dir", "m", "--quantize-model-path", "q", "--data-dir", "."])
    assert args.algo == "hist"


def test_convert_parity_gate() -> None:
    import numpy as np

    from pdserve.pipeline.convert import compare, parity_failure

    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    same = compare(reference, reference + 1e-6)
    assert same["top1_equal"] == 3
    assert parity_failure(same, 1e-4) is None
    assert "up to" in (parity_failure(same, 1e-7) or "")
    flipped = compare(reference, reference[:, ::-1].copy())
    assert flipped["top1_differ"] == [0, 1, 2]
    assert parity_failure(flipped, 1.0) == "top-1 differs from Paddle on 3 of 3 images"
