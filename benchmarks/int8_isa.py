"""FP32 and INT8 top-1 on the report split under each oneDNN instruction set this CPU can run, and
what the INT8 version's validation set says there (issue 18).

    .venv/bin/python benchmarks/int8_isa.py [--isa AVX2 SSE41 ...] [--models FP32_DIR INT8_DIR ...]

Each (model, ISA) runs in a child process with ``ONEDNN_MAX_CPU_ISA`` set (``pdserve.pipeline.isa``);
the CPU is named. Prints a Markdown table and writes ``bench-results/int8_isa.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from pdserve.pipeline.dataset import load_images, read_label_list
from pdserve.pipeline.isa import ISA_ORDER, distinct_isas, native_isa, predict_under
from pdserve.pipeline.local import LocalModel
from pdserve.runtime.validation import ValidationSet, compare, cpu_isa

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", nargs="*", default=list(ISA_ORDER), help="ISAs to try (older than this CPU's)")
    repo = ROOT / "model_repo"
    parser.add_argument("--fp32", type=Path, default=repo / "efficientnet_lite0")
    parser.add_argument("--int8", type=Path, nargs="+", default=[repo / "efficientnet_lite0_int8"])
    parser.add_argument("--data-root", type=Path, default=SAMPLE)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    native, extra = distinct_isas(args.isa)
    isas = [native, *extra]
    samples = read_label_list(ROOT / "data" / "imagenet-sample-report.txt", args.data_root)
    labels = np.array([s.label for s in samples])
    fp32 = LocalModel.open(args.fp32)
    images = load_images(samples, fp32.config.preprocessing, "report split")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        report_file = Path(tmp) / "report.npy"
        np.save(report_file, images)
        for isa in isas:
            ref = predict_under(isa, args.fp32, report_file, args.threads)
            ref_top1 = float(np.mean(ref.argmax(1) == labels))
            rows.append({"isa": isa, "model": args.fp32.name, "top1": ref_top1, "drop": 0.0, "agreement": 1.0})
            for int8 in args.int8:
                out = predict_under(isa, int8, report_file, args.threads)
                top1 = float(np.mean(out.argmax(1) == labels))
                row = {
                    "isa": isa,
                    "model": int8.name,
                    "top1": top1,
                    "drop": round((ref_top1 - top1) * 100, 2),
                    "agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
                }
                vset = ValidationSet.load(LocalModel.open(int8).version_dir)
                if vset is not None:
                    crops_file = Path(tmp) / "validation.npy"
                    from pdserve.preprocess import Normalizer

                    np.save(crops_file, Normalizer(fp32.config.preprocessing)(vset.crops))
                    agreement, largest = compare(vset.reference, predict_under(isa, int8, crops_file, args.threads))
                    row["validation_agreement"] = agreement
                    row["validation_largest_drop"] = largest
                rows.append(row)
    cpu = cpu_isa()
    print(f"CPU: {cpu}; this process: {native_isa()}; report split: {len(samples)} images")
    print("| ISA | model | top-1 | drop (points) | agreement with FP32 | validation set: agreement | largest drop |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        v = (
            f"{r['validation_agreement']:.1%} | {r['validation_largest_drop']:.3f}"
            if "validation_agreement" in r
            else "- | -"
        )
        print(f"| {r['isa']} | {r['model']} | {r['top1']:.1%} | {r['drop']:+.2f} | {r['agreement']:.1%} | {v} |")
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "int8_isa.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
