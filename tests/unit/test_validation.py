from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pdserve.runtime.validation import VALIDATION_FILE, ValidationSet, compare, cpu_isa


def test_the_set_round_trips_through_jpeg_and_stays_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    jpegs = ValidationSet.encode(rng.integers(0, 256, (4, 224, 224, 3), dtype=np.uint8))
    crops = ValidationSet.decode(jpegs)  # what the reference is computed on
    reference = rng.random((4, 1000), dtype=np.float32)
    ValidationSet(jpegs, reference).save(tmp_path)
    loaded = ValidationSet.load(tmp_path)
    assert loaded is not None
    # what the worker reads back is exactly what the reference was computed on
    np.testing.assert_array_equal(loaded.crops, crops)
    np.testing.assert_allclose(loaded.reference, reference, atol=1e-3)
    assert ValidationSet.load(tmp_path / "absent") is None
    assert (tmp_path / VALIDATION_FILE).stat().st_size < 4 * 120_000  # noise is JPEG's worst case


def test_agreement_and_the_largest_drop_of_the_fp32_answer() -> None:
    reference = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]], np.float32)
    same = reference.copy()
    assert compare(reference, same) == (1.0, 0.0)
    worse = np.array([[0.6, 0.4, 0.0], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]], np.float32)
    agreement, drop = compare(reference, worse)
    assert agreement == pytest.approx(2 / 3)
    assert drop == pytest.approx(0.3)


def test_the_isa_is_named_with_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "limited by ONEDNN_MAX_CPU_ISA=AVX2" in cpu_isa()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert cpu_isa().split()[0] in {"AVX512_CORE_AMX", "AVX512_CORE_VNNI", "AVX512_CORE", "AVX2_VNNI", "AVX2", "SSE41"}
