"""``pdserve calibrate``: TensorRT's own INT8 calibration (``use_calib_mode=True``).

Runs images through a GPU predictor so Paddle writes its calibration table into the model's
optimisation cache, then records in ``config.yaml`` that the model serves with that table.
Needs a CUDA build of Paddle with TensorRT; this project could not run it (see README, GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pdserve.model_config import CONFIG_FILE
from pdserve.pipeline.dataset import Sample, batches, load_images
from pdserve.pipeline.errors import PipelineError
from pdserve.pipeline.export import write_config
from pdserve.pipeline.local import LocalModel


def require_cuda() -> None:
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        raise PipelineError(
            "calibrate needs a CUDA build of Paddle with TensorRT (paddlepaddle-gpu); this is the CPU build. "
            "For CPU INT8 use 'pdserve quantize'."
        )


def calibrate(model_dir: Path, samples: list[Sample], gpu: int = 0, cache_dir: Path | None = None) -> dict[str, Any]:
    require_cuda()  # before reading a single image
    model = LocalModel.open(model_dir)
    cache = cache_dir or model.path / "trt_cache"
    trt = model.config.tensorrt.model_copy(update={"use_calib_mode": True, "cache_dir": str(cache)})
    config = model.config.model_copy(update={"device": f"gpu:{gpu}", "precision": "int8", "tensorrt": trt})
    calibrating = LocalModel(model.name, model.path, model.version, config)
    predictor = calibrating.predictor()
    images = load_images(samples, config.preprocessing, "calibrating")
    for batch in batches(images, config.max_batch_size):
        predictor.run(batch)
    del predictor  # Paddle writes the calibration table when the predictor is destroyed
    doc = yaml.safe_load((model.path / CONFIG_FILE).read_text())
    doc.update(device=config.device, precision="int8")
    doc["tensorrt"] = {**doc.get("tensorrt", {}), "use_calib_mode": True, "cache_dir": str(cache)}
    write_config(model.path, doc)
    return {"model_dir": str(model.path), "images": len(images), "cache_dir": str(cache)}
