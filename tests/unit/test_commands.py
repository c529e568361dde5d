"""The offline commands' arguments (parsing only; tests/e2e/test_cli.py runs them)."""

from __future__ import annotations

from pdserve.cli import build_parser


def test_quantize_defaults_to_the_algorithm_measured_best() -> None:
    # hist changed the fewest answers of FP32 on the selection split; KL lost 27.6 points (BENCHMARKS.md)
    args = build_parser().parse_args(["quantize", "--model-dir", "m", "--quantize-model-path", "q", "--data-dir", "."])
    assert args.algo == "hist"
