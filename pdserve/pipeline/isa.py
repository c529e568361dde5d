"""Run a model under a restricted oneDNN instruction set, in a child process.

oneDNN picks its kernels by the CPU's instruction set, once per process, and honours
``ONEDNN_MAX_CPU_ISA`` (AVX2, AVX512_CORE, AVX512_CORE_VNNI, AVX512_CORE_AMX, ...) to use no newer
one. INT8 results differ by ISA (README, Quantize), so the search measures each candidate under
every ISA the model may be served on: a child process per measurement, with the variable set
before Paddle loads.

    python -m pdserve.pipeline.isa MODEL_DIR IMAGES.npy OUT.npy [--threads N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pdserve.runtime.validation import cpu_isa

ISA_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_AMX")


def native_isa() -> str:
    """The ISA this process runs oneDNN with: the CPU's best, or the limit set in the environment."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return limit if limit in ISA_ORDER else cpu_isa().split()[0]


def distinct_isas(wanted: list[str]) -> tuple[str, list[str]]:
    """This process's ISA, and those of ``wanted`` that differ from it and the CPU can emulate."""
    native = native_isa()
    rank = ISA_ORDER.index(native) if native in ISA_ORDER else len(ISA_ORDER)
    extra = []
    for isa in wanted:
        isa = isa.upper()
        if isa not in ISA_ORDER:
            raise ValueError(f"unknown ISA {isa!r}; one of {', '.join(ISA_ORDER)}")
        if isa != native and ISA_ORDER.index(isa) < rank and isa not in extra:
            extra.append(isa)
    return native, extra


def predict_under(isa: str, model_dir: Path, images: Path, threads: int) -> np.ndarray:
    """The model's outputs for the ``.npy`` images, computed in a child process limited to ``isa``."""
    out = images.with_name(f"{images.stem}.{model_dir.name}.{isa}.npy")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
    cmd = [
        sys.executable,
        "-m",
        "pdserve.pipeline.isa",
        str(model_dir),
        str(images),
        str(out),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {model_dir} under {isa} failed:\n{done.stderr[-3000:]}")
    probs: np.ndarray = np.load(out)
    out.unlink()
    return probs


def main(argv: list[str] | None = None) -> None:
    from pdserve.pipeline.local import LocalModel, predict_timed
    from pdserve.pipeline.quantization.search import EVAL_BATCH, onednn_report_hidden

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    model = LocalModel.open(args.model_dir, cpu_threads=args.threads)
    images = np.load(args.images)
    with onednn_report_hidden():
        outputs, _ = predict_timed(model, images, EVAL_BATCH)
    np.save(args.out, outputs)


if __name__ == "__main__":
    main()
