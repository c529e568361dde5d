"""The pure parts of the INT8 recipe machinery: recipes, thresholds from statistics, ranking."""

from __future__ import annotations

import numpy as np
import pytest

from pdserve.pipeline.errors import PipelineError
from pdserve.pipeline.quantization.calibration import Layer, Statistics, kl_threshold, thresholds
from pdserve.pipeline.quantization.recipe import Recipe
from pdserve.pipeline.quantization.search import RecipeCandidate


def test_recipe_names_round_trips_and_validation() -> None:
    recipe = Recipe(algo="hist", hist_percent=0.999, weight_quantize_type="abs_max", fp32_layers=("a", "b"))
    assert recipe.name == "hist0.999+w-tensor+fuse-bn+fp32x2"
    assert Recipe().name == "hist0.99999+fuse-bn"  # the default: what the search chose
    assert Recipe.from_dict(recipe.as_dict()) == recipe
    assert Recipe(algo="KL", bounded_scales=False, fuse_bn=True).name == "KL+fuse-bn+unbounded"
    with pytest.raises(PipelineError, match="unknown algo 'KLD'"):
        Recipe(algo="KLD")
    with pytest.raises(PipelineError, match="unknown recipe fields: colour"):
        Recipe.from_dict({"algo": "hist", "colour": "red"})
    with pytest.raises(PipelineError, match="hist_percent"):
        Recipe(hist_percent=1.5)


@pytest.mark.parametrize("seed", range(4))
def test_kl_threshold_is_paddles_cal_kl_threshold(seed: int) -> None:
    from paddle.static.quantization.cal_kl_threshold import cal_kl_threshold

    rng = np.random.default_rng(seed)
    values = np.abs(rng.standard_normal(20000)) if seed % 2 else np.minimum(rng.exponential(1.0, 20000), 6.0)
    hist, edges = np.histogram(values, bins=2048, range=(0, values.max()))
    hist[rng.integers(0, 2048, 50)] = 0  # empty bins, as real activations have
    width = float(edges[1] - edges[0])
    assert kl_threshold(hist, width) == pytest.approx(cal_kl_threshold(hist, width, 8), rel=1e-12)


def _stats() -> Statistics:
    edges = np.linspace(0, 6, 2049)
    hist = np.zeros(2048, np.int64)
    hist[:100] = 10
    hist[-1] = 1  # one outlier at 6
    return Statistics(
        batches=2,
        activations=["x", "relu6_0.tmp_0"],
        producers={"x": "feed", "relu6_0.tmp_0": "relu6"},
        layers=[Layer("conv2d_0.w_0", "conv2d", "x", "conv2d_0.tmp_0")],
        batch_max={"x": [1.0, 3.0], "relu6_0.tmp_0": [6.0, 4.0]},
        batch_avg={"x": [0.5, 1.5], "relu6_0.tmp_0": [2.0, 4.0]},
        histograms={"x": (hist, edges), "relu6_0.tmp_0": (hist, edges)},
    )


def test_thresholds_per_algorithm_from_one_set_of_statistics() -> None:
    stats = _stats()
    raw = Recipe(bounded_scales=False)
    assert thresholds(stats, raw.with_(algo="abs_max")) == {"x": 3.0, "relu6_0.tmp_0": 6.0}
    assert thresholds(stats, raw.with_(algo="abs_max", batch_nums=1)) == {"x": 1.0, "relu6_0.tmp_0": 6.0}
    assert thresholds(stats, raw.with_(algo="avg")) == {"x": 1.0, "relu6_0.tmp_0": 3.0}
    hist = thresholds(stats, raw.with_(algo="hist", hist_percent=0.99))
    assert hist["x"] < 0.3  # the 99th percentile ignores the lone outlier at 6
    assert hist["relu6_0.tmp_0"] < 0.3
    assert thresholds(stats, Recipe(algo="hist", hist_percent=0.99))["relu6_0.tmp_0"] == 6.0  # bounded by default
    with pytest.raises(PipelineError, match="statistics lack a mse pass"):
        thresholds(stats, Recipe(algo="mse"))
    with pytest.raises(PipelineError, match="every calibration batch"):
        thresholds(stats, Recipe(algo="KL", batch_nums=1))


def _candidate(name: str, drop: float, divergence: float, fp32: int = 0, target: float = 0.5) -> RecipeCandidate:
    recipe = Recipe(algo="hist", fp32_layers=tuple(f"{name}{i}" for i in range(fp32)))
    return RecipeCandidate(recipe, "x", 0.9, 0.98, 0.97, 0, 0, divergence, 100.0, drop, drop <= target, 1.0)


def test_ranking_prefers_meeting_the_target_then_fewer_fp32_layers_then_divergence() -> None:
    misses_close = _candidate("a", 0.67, 0.001)
    misses_far = _candidate("b", 1.33, 0.0001)
    meets_with_fallback = _candidate("c", 0.0, 0.001, fp32=2)
    meets_lower_divergence = _candidate("d", 0.0, 0.002)
    meets = _candidate("e", 0.0, 0.003)
    ranked = sorted(
        [misses_far, meets, misses_close, meets_with_fallback, meets_lower_divergence], key=RecipeCandidate.rank
    )
    assert ranked == [meets_lower_divergence, meets, meets_with_fallback, misses_close, misses_far]
