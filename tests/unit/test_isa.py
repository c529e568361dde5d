from __future__ import annotations

import pytest

from pdserve.pipeline import isa


def test_only_older_isas_than_this_cpus_are_measured_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isa, "native_isa", lambda: "AVX512_CORE_VNNI")
    assert isa.distinct_isas(["avx2", "AVX2", "AVX512_CORE_VNNI", "AVX512_CORE_AMX"]) == ("AVX512_CORE_VNNI", ["AVX2"])
    monkeypatch.setattr(isa, "native_isa", lambda: "AVX2")
    assert isa.distinct_isas(["AVX2"]) == ("AVX2", [])  # an AVX2-only CPU: one measurement
    with pytest.raises(ValueError, match="unknown ISA 'AVX3'"):
        isa.distinct_isas(["AVX3"])


def test_the_limit_in_the_environment_is_this_process_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "sse41")
    assert isa.native_isa() == "SSE41"
