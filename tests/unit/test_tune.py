"""pdserve tune's pure parts: layouts, ranking, and writing config.yaml with its comments kept."""

from __future__ import annotations

import yaml

from pdserve.model_config import ModelConfig
from pdserve.pipeline.tune import (
    Measurement,
    ServingCandidate,
    TuneOptions,
    better,
    layouts_for,
    meets,
    update_config_text,
)

BASE = ServingCandidate(2, 1, 8, 0.0)


def measured(rps: float, p50: float, p99: float, ok: bool = True, **changes: object) -> Measurement:
    return Measurement(ServingCandidate(**{**BASE.settings(), **changes}), "stage", ok, "", rps, p50, p99)


def test_layouts_use_every_core() -> None:
    assert layouts_for(2) == [(1, 2), (2, 1)]
    assert layouts_for(4) == [(1, 4), (2, 2), (4, 1)]
    assert layouts_for(1) == [(1, 1)]


def test_throughput_goal_ranks_within_the_p99_limit_first() -> None:
    options = TuneOptions(goal="throughput", p99_ms=200)
    fast_but_slow_tail = measured(120, 100, 250)
    within = measured(100, 120, 190, instances=1)
    assert better(within, fast_but_slow_tail, options)
    assert not better(fast_but_slow_tail, within, options)
    assert better(measured(110, 120, 195), within, options)
    # neither within the limit: the closer one
    assert better(measured(90, 100, 210), fast_but_slow_tail, options)
    assert not meets(fast_but_slow_tail, options)


def test_latency_goal_ranks_by_median_and_failures_never_win() -> None:
    options = TuneOptions(goal="latency")
    assert better(measured(50, 12, 20), measured(80, 14, 16), options)
    broken = measured(500, 1, 1, ok=False)
    assert not better(broken, None, options)
    assert better(measured(1, 100, 100), broken, options)


def test_config_is_rewritten_in_place_with_comments_kept_and_a_tuned_block() -> None:
    text = (
        "# a model\n"
        "input:\n  name: x\n  shape: [3, 224, 224]\n"
        "# two single-threaded workers\n"
        "instances: 2\n"
        "cpu_threads: 1\n"
        "max_batch_size: 8\n"
        "tuned:\n  date: old\n  measured:\n    requests_per_s: 1\n"
        "max_queue_size: 32\n"
    )
    settings = ServingCandidate(1, 2, 16, 2.0, "openvino").settings()
    out = update_config_text(text, settings, {"date": "new", "measured": {"requests_per_s": 118.8}})
    assert "# a model\n" in out
    assert "# two single-threaded workers\ninstances: 1\ncpu_threads: 2\nmax_batch_size: 16\n" in out
    assert out.count("tuned:") == 1
    assert "old" not in out
    doc = yaml.safe_load(out)
    assert doc["max_queue_size"] == 32
    assert doc["engine"] == "openvino"
    assert doc["max_queue_delay_ms"] == 2.0
    assert doc["tuned"] == {"date": "new", "measured": {"requests_per_s": 118.8}}
    config = ModelConfig.model_validate(doc)
    assert (config.instances, config.cpu_threads, config.engine) == (1, 2, "openvino")
    # applying it again changes nothing
    assert update_config_text(out, settings, doc["tuned"]) == out
