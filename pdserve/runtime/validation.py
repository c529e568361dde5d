"""A quantized model checked where it runs: a small validation set in its version folder, run by every
worker after warm-up and compared with the FP32 model's outputs (issue 18).

oneDNN's INT8 kernels differ by instruction set (AVX2 goes through saturating int16 intermediates
that VNNI and AMX do not have), so an INT8 model measured on one CPU can be worse on another. The set
(``validation.npz``, written by ``pdserve quantize``) holds a few dozen crops, JPEG-encoded to stay a
few hundred KB, and the FP32 model's outputs for exactly those decoded crops. A worker runs them
through the INT8 predictor it will serve and reports the top-1 agreement with FP32 and the largest
drop of an image's FP32 top-1 probability; over the model's ``quantization.max_disagreement`` the
version is refused, or served from its FP32 twin (``quantization.on_failure: fallback``).
"""

from __future__ import annotations

import itertools
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pdserve.preprocess import decode_image

VALIDATION_FILE = "validation.npz"
JPEG_QUALITY = 80  # about 10 KB a 224x224 crop; the FP32 reference is computed from the decoded bytes


@dataclass(frozen=True)
class ValidationSet:
    jpegs: tuple[bytes, ...]  # the crops, as stored; decoded, they are what the reference was computed on
    reference: np.ndarray  # float32 [N, classes]: the FP32 model's outputs for the decoded crops

    @staticmethod
    def encode(crops: np.ndarray) -> tuple[bytes, ...]:
        """uint8 RGB crops [N, H, W, C] as JPEG. Decode these (``decode``) before computing the reference:
        JPEG is lossy, and decoding is deterministic, encoding a decoded image again is not."""
        return tuple(_encode(c) for c in crops)

    @staticmethod
    def decode(jpegs: tuple[bytes, ...]) -> np.ndarray:
        return np.stack([decode_image(j, max_pixels=1 << 24) for j in jpegs])  # the server's own decoder

    @property
    def crops(self) -> np.ndarray:
        """uint8 [N, H, W, C], RGB, as the worker's normaliser takes them."""
        return self.decode(self.jpegs)

    def save(self, version_dir: Path) -> Path:
        path = version_dir / VALIDATION_FILE
        arrays: dict[str, np.ndarray] = {
            "jpeg": np.frombuffer(b"".join(self.jpegs), np.uint8),
            "lengths": np.array([len(j) for j in self.jpegs], np.int64),
            "reference": self.reference.astype(np.float16),  # enough for a top-1 and a drop of 0.001
        }
        # np.savez stamps the time into the zip: written by hand, the same set gives the same bytes.
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with z.open(info, "w") as f:
                    np.lib.format.write_array(f, array)
        return path

    @classmethod
    def load(cls, version_dir: Path) -> ValidationSet | None:
        path = version_dir / VALIDATION_FILE
        if not path.is_file():
            return None
        with np.load(path) as doc:
            data, lengths, reference = doc["jpeg"].tobytes(), doc["lengths"], doc["reference"]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        jpegs = tuple(data[a:b] for a, b in itertools.pairwise(bounds))
        return cls(jpegs, reference.astype(np.float32))


def _encode(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("cannot encode a validation crop")
    return bytes(buf)


@dataclass(frozen=True)
class ValidationResult:
    images: int
    agreement: float  # fraction of images whose top-1 class is FP32's
    largest_drop: float  # the largest fall of an image's FP32 top-1 probability, 0..1
    max_disagreement: float
    isa: str
    seconds: float
    passed: bool
    action: str = "serve"  # serve | refuse | fallback

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"INT8 validation on {self.isa}: top-1 agrees with FP32 on {self.agreement:.1%} of {self.images} images "
            f"(disagreement {1 - self.agreement:.1%}, allowed {self.max_disagreement:.1%}), largest drop of an "
            f"image's FP32 top-1 probability {self.largest_drop:.3f}"
        )


def compare(reference: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement of ``outputs`` with ``reference``, and the largest drop of the reference's top-1 score."""
    ref_top1 = reference.argmax(axis=1)
    agreement = float(np.mean(outputs.argmax(axis=1) == ref_top1))
    rows = np.arange(len(reference))
    drop = float(np.max(reference[rows, ref_top1] - outputs[rows, ref_top1], initial=0.0))
    return agreement, drop


def cpu_isa() -> str:
    """The best instruction set oneDNN can use here, and the CPU's name; with ``ONEDNN_MAX_CPU_ISA`` when set."""
    flags: set[str] = set()
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
    except OSError:
        pass
    if {"amx_int8", "amx_tile"} <= flags:
        isa = "AVX512_CORE_AMX"
    elif "avx512_vnni" in flags:
        isa = "AVX512_CORE_VNNI"
    elif "avx512f" in flags:
        isa = "AVX512_CORE"
    elif "avx_vnni" in flags:
        isa = "AVX2_VNNI"
    elif "avx2" in flags:
        isa = "AVX2"
    else:
        isa = "SSE41"
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    limited = f", limited by ONEDNN_MAX_CPU_ISA={limit}" if limit else ""
    return f"{isa} ({name}{limited})"
