"""The schema of ``model_repo/<model>/config.yaml``, validated when the model loads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, field_validator, model_validator

from pdserve.errors import ModelConfigError

CONFIG_FILE = "config.yaml"
PositiveInt = Annotated[int, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Section):
    name: str = Field("x", description="Name of the Paddle input tensor.")
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (3, 224, 224), description="Per-image shape, CHW, without the batch dimension."
    )
    dtype: Literal["float32"] = Field("float32", description="Element type of the input tensor.")


class Preprocessing(_Section):
    """Decode to RGB, resize the shorter side, center-crop, then (x - mean) / std per channel."""

    resize_shorter: PositiveInt = Field(256, description="Length of the shorter side after resizing.")
    resize_to: tuple[PositiveInt, PositiveInt] | None = Field(
        None,
        description="Resize to exactly this width and height instead (resize_shorter is then unused), as "
        "PaddleClas's ResizeImage with size; the center crop follows.",
    )
    interpolation: Literal["bilinear", "bicubic", "area", "nearest", "lanczos"] = "bilinear"
    crop: PositiveInt = Field(224, description="Side of the center crop; must match the input's H and W.")
    mean: tuple[float, float, float] = Field((123.675, 116.28, 103.53), description="RGB, on 0..255 pixels.")
    std: tuple[float, float, float] = Field((58.395, 57.12, 57.375), description="RGB, on 0..255 pixels.")
    reduced_jpeg_decode: bool = Field(
        True,
        description="Decode a JPEG whose shorter side is at least twice resize_shorter at 1/2, 1/4 or 1/8 scale "
        "inside the JPEG decoder (still at least resize_shorter): a 12-megapixel photo decodes several times "
        "faster. false: always decode every pixel.",
    )

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v

    @model_validator(mode="after")
    def _crop_fits(self) -> Preprocessing:
        if self.resize_to is not None and self.crop > min(self.resize_to):
            raise ValueError(f"crop ({self.crop}) must fit in resize_to {list(self.resize_to)}")
        return self


class Output(_Section):
    name: str | None = Field(None, description="Output tensor to read; default: the model's first output.")
    softmax_applied: bool = Field(
        True, description="True if the model already ends in a softmax; otherwise the server applies one."
    )


class Detection(_Section):
    """``kind: detection``: PaddleDetection's deploy preprocessing (``infer_cfg.yml``'s ``Preprocess``)
    and the score threshold. The image is decoded to RGB, resized with ``cv2.resize(fx, fy)``, normalised
    ``(x [/ 255] - mean) / std`` and laid out CHW; batches are padded to one shape (bottom and right)."""

    target_size: tuple[PositiveInt, PositiveInt] = Field((640, 640), description="Resize target, [H, W].")
    keep_ratio: bool = Field(
        False,
        description="false: stretch to target_size. true: one scale for both sides, the short side to the smaller "
        "target and the long side at most the larger (PaddleDetection's Resize); images are then padded to "
        "[max(target_size)] * 2.",
    )
    interp: int = Field(1, ge=0, le=4, description="OpenCV interpolation code (infer_cfg.yml's interp; 2: bicubic).")
    is_scale: bool = Field(True, description="Divide by 255 before the mean and std (on 0..1 pixels).")
    norm_type: Literal["mean_std", "none"] = Field("mean_std", description="none: no mean/std step.")
    mean: tuple[float, float, float] = Field((0.485, 0.456, 0.406), description="RGB, on the scaled pixels.")
    std: tuple[float, float, float] = Field((0.229, 0.224, 0.225), description="RGB, on the scaled pixels.")
    pad_stride: int = Field(0, ge=0, description="Pad H and W up to a multiple of this (PadStride); 0: none.")
    score_threshold: float = Field(
        0.5, ge=0, le=1, description="Boxes scoring below it are dropped; a request's score_threshold overrides it."
    )
    arch: str | None = Field(None, description="The architecture the export names (infer_cfg.yml's arch).")

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v

    @property
    def padded_size(self) -> tuple[int, int]:
        """[H, W] every image of a batch is padded to: one shape, so a batch equals its images alone."""
        h, w = (max(self.target_size),) * 2 if self.keep_ratio else self.target_size
        if self.pad_stride:
            h, w = (-(-d // self.pad_stride) * self.pad_stride for d in (h, w))
        return h, w


class DynamicShape(_Section):
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


class TensorRT(_Section):
    """Settings for ``Config.enable_tensorrt_engine``; used only with ``device: gpu:N``."""

    enabled: bool = True
    workspace_size: PositiveInt = Field(1 << 30, description="Bytes TensorRT may use while building engines.")
    min_subgraph_size: PositiveInt = Field(3, description="Smallest subgraph handed to TensorRT.")
    use_static: bool = Field(False, description="Serialize built engines to cache_dir and reuse them.")
    use_calib_mode: bool = Field(
        False,
        description="Ignored: the model decides. A model with quantize/dequantize ops (pdserve quantize) runs "
        "with TensorRT explicit quantization; a float model with precision int8 with TensorRT calibration "
        "(pdserve calibrate). Kept so that older configs load.",
    )
    shape_mode: Literal["dynamic", "tuned", "static"] = Field(
        "dynamic",
        description="dynamic: one engine profile from dynamic_shape (or batch 1..max_batch_size at the input "
        "shape). tuned: the shape ranges pdserve collect-shapes recorded (shape_range_info.pbtxt in the version "
        "folder). static: one fixed shape, every batch padded to max_batch_size.",
    )
    dynamic_shape: DynamicShape | None = Field(None, description="min/opt/max NCHW; derived from the input if unset.")
    cache_dir: str | None = Field(
        None,
        description="Engine and calibration cache root (set_optim_cache_dir); each model version gets its own "
        "folder below it, keyed by precision, shape profile and a hash of the weights.",
    )


class OnnxRuntime(_Section):
    """Settings of ``engine: onnxruntime`` on ``device: gpu:N`` (the CUDA execution provider)."""

    io_binding: bool = Field(
        False,
        description="Keep a device buffer per input shape and bind the outputs on the GPU instead of "
        "session.run's own copies. Off: on an H100 it was no faster at batch 1-256 (BENCHMARKS.md).",
    )
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "HEURISTIC",
        description="How cuDNN picks each convolution's algorithm. EXHAUSTIVE benchmarks them again whenever the "
        "batch shape differs from the last run's (measured on an H100: about 1 s a batch once served batch sizes "
        "vary, BENCHMARKS.md), so it suits only one fixed batch shape.",
    )
    use_tf32: bool = Field(True, description="TF32 tensor cores for FP32 matrix work (Ampere and newer).")
    session_per_shape: bool = Field(
        True,
        description="One ONNX Runtime session per padded batch size, each seeing one input shape. The CUDA "
        "provider re-plans every convolution when a session's input shape changes (measured on an H100 with "
        "onnxruntime-gpu 1.31: 0.4-1 s a change, whatever cudnn_conv_algo_search says), and a served model's "
        "batch size changes from one batch to the next; the cost is one copy of the weights per size.",
    )


class Quantization(_Section):
    """How an INT8 version is checked where it loads (``validation.npz`` in its folder, made by
    ``pdserve quantize``): every worker runs the set after warm-up and compares with FP32."""

    check: bool = Field(True, description="Run the version's validation set at every worker start.")
    max_disagreement: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Largest fraction of validation images whose top-1 may differ from FP32's. The default "
        "is measured (README, Quantize): a sound model disagrees on 0-6% of the shipped set on AVX2, "
        "a broken one on most.",
    )
    on_failure: Literal["refuse", "fallback"] = Field(
        "refuse",
        description="Over max_disagreement: refuse the version (FAILED, with the numbers), or serve its FP32 "
        "twin under this model's name and report the model DEGRADED.",
    )
    fallback: str | None = Field(
        None,
        description="The FP32 twin for on_failure: fallback, as 'model/version' in this repository; default: "
        "calibration.from_model (the model it was quantized from).",
    )


class Ocr(_Section):
    """``kind: ocr``: PaddleOCR's pipeline over three models of the repository. Defaults are PaddleOCR's
    (tools/infer/utility.py for PP-OCRv4); RapidOCR's differ (limit_side_len 736 min, box_thresh 0.5,
    unclip_ratio 1.6, dilation, det mean/std 0.5)."""

    det_model: str = Field("ppocr_v4_det", description="Text detection (DB) model of the repository, kind tensor.")
    cls_model: str | None = Field(
        "ppocr_mobile_v2_cls", description="Text direction (0/180 degrees) model; null: no direction step."
    )
    rec_model: str = Field("ppocr_v4_rec", description="Text recognition (CTC) model of the repository, kind tensor.")
    dictionary: str = Field("ppocr_keys_v1.txt", description="Recognition characters, one a line, in the model folder.")
    use_space_char: bool = Field(True, description="The recogniser's last class is a space.")
    det_limit_side_len: PositiveInt = 960
    det_limit_type: Literal["max", "min"] = Field(
        "max", description="max: shrink so the longer side is at most det_limit_side_len; min: grow the shorter."
    )
    det_mean: tuple[float, float, float] = Field((0.485, 0.456, 0.406), description="On 0..1 pixels, BGR order.")
    det_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    det_bucket: PositiveInt = Field(
        32,
        description="Detection inputs are padded up to multiples of this (32: no padding beyond the model's own), "
        "so that images of nearby sizes share a shape and batch together.",
    )
    det_db_thresh: float = Field(0.3, description="Pixels of the probability map above this are text.")
    det_db_box_thresh: float = Field(0.6, description="Boxes whose mean probability is below this are dropped.")
    det_db_unclip_ratio: float = Field(1.5, description="How far a text region is grown back out.")
    det_max_candidates: PositiveInt = 1000
    det_use_dilation: bool = False
    cls_image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (3, 48, 192)
    cls_thresh: float = Field(0.9, description="A line is turned 180 degrees when the classifier is this sure.")
    rec_image_height: PositiveInt = 48
    rec_widths: tuple[PositiveInt, ...] = Field(
        (96, 160, 256, 352, 448, 640, 800, 1280),
        description="rec_padding buckets: a line is resized to rec_image_height and padded up to the next "
        "bucket (wider lines are squeezed into the last), so lines from all requests batch by bucket. The "
        "default was chosen on the lines of pdserve.pipeline.text_images.CASES (padding waste 11% there). "
        "Either way the OCR repository's recogniser builds these widths before it is ready.",
    )
    rec_padding: Literal["paddleocr", "buckets"] = Field(
        "paddleocr",
        description="paddleocr: lines padded as PaddleOCR pads them (an image's lines sorted by aspect ratio, "
        "taken rec_batch_num at a time, each group to its widest line and to at least rec_image_width), for "
        "PaddleOCR's own text: the recogniser reads a line a little differently with different padding to its "
        "right, spaces above all. Lines of all requests batch when their widths are equal (320 is common). "
        "buckets: each line padded only to its width bucket (rec_widths), so lines of all requests batch by "
        "bucket with less padding and only warmed shapes run, at the cost of some lines read differently.",
    )
    rec_batch_num: PositiveInt = Field(6, description="rec_padding paddleocr: lines of an image padded together.")
    rec_image_width: PositiveInt = Field(320, description="rec_padding paddleocr: the narrowest a line is padded to.")
    drop_score: float = Field(0.5, description="Lines recognised with a lower score are left out.")


class Tensor(_Section):
    """``kind: tensor``: the shapes to build before the first request (oneDNN builds primitives and grows
    its memory on the first run of each input shape: 2-4x the time of the next run)."""

    warm_shapes: tuple[dict[str, tuple[PositiveInt, ...]], ...] = Field(
        (),
        description="Input shapes without the batch dimension, each naming every input, e.g. "
        "[{x: [3, 48, 320]}]. Workers run each one at every size of batch_sizes before they are ready, and "
        "requests stacked together then run only at those sizes: split into them on a CPU (a padded row costs "
        "as much as a real one there), padded up to one on a GPU. Empty: no warm-up, stacks run as they come.",
    )


class ModelConfig(_Section):
    description: str = ""
    kind: str = Field(
        "image",
        description="What the model takes and answers, one of pdserve.kinds.KINDS (checked when the repository "
        "is read). image: an image classifier fed encoded images (input, preprocessing, output apply). "
        "tensor: any Paddle inference model, fed named tensors over the v2 protocol; its inputs and outputs "
        "are read from the model itself. detection: a PaddleDetection export (image, im_shape, scale_factor -> "
        "bbox, bbox_num) fed encoded images (detection applies).",
    )
    input: InputSpec = InputSpec()
    preprocessing: Preprocessing = Preprocessing()
    output: Output = Output()
    detection: Detection = Detection()
    labels: str | None = Field(None, description="File of class names in class-id order, one a line.")
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    device: str = Field("cpu", description="'cpu' or 'gpu:N'.")
    devices: list[str] | None = Field(
        None,
        description="GPUs to spread the model over, e.g. [gpu:0, gpu:1], as Triton's instance_group gpus: "
        "`instances` workers on each one listed. Overrides device.",
    )
    engine: Literal["onednn", "openvino", "onnxruntime"] = Field(
        "onednn",
        description="Inference engine: Paddle's own kernels (oneDNN on CPU, CUDA/TensorRT on gpu:N), the OpenVINO "
        "engine in Paddle's CPU wheel, or ONNX Runtime on the version's model.onnx (pdserve convert writes it; CPU, "
        "or the CUDA/TensorRT execution providers on gpu:N). pdserve tune checks outputs match before choosing one.",
    )
    instances: PositiveInt = Field(1, description="Worker processes, each with its own predictor.")
    cpu_threads: PositiveInt = Field(1, description="Math library threads per instance.")
    onednn_cache_shapes: NonNegativeInt = Field(
        0,
        description="Engine onednn: the input shapes whose primitives oneDNN keeps, the least recently used "
        "dropped (Paddle's set_mkldnn_cache_capacity); 0: all. Bound it for a model that sees ever new shapes.",
    )
    max_batch_size: PositiveInt = Field(8, description="Largest batch the batcher forms.")
    max_queue_delay_ms: float = Field(5.0, ge=0, description="How long a batch waits for more requests.")
    batch_sizes: tuple[PositiveInt, ...] | None = Field(
        None,
        description="Batches are padded up to one of these; default: powers of two and max_batch_size. Kind "
        "tensor with tensor.warm_shapes: the rows of one run (the largest may be below max_batch_size).",
    )
    trim_batches: bool | None = Field(
        None,
        description="Cut a batch that falls between two of batch_sizes down to the smaller, leaving the rest "
        "queued for the next batch, instead of padding it up: on a CPU each padded row costs as much as a real "
        "one. Default: on for device cpu, off for gpu (where padding is nearly free).",
    )
    max_queue_size: PositiveInt = Field(
        64,
        description="Images admitted but not yet dispatched (decoding + queued); beyond it 429 overloaded. "
        "Size it to the wait you accept: about max_queue_size / images per second.",
    )
    timeout_ms: PositiveInt | None = Field(
        None,
        description="Default deadline of a request; X-Request-Timeout-Ms overrides it. "
        "Default: the server's PDSERVE_REQUEST_TIMEOUT_S.",
    )
    compute_timeout_ms: PositiveInt | None = Field(
        None,
        description="A batch running longer marks its worker hung: killed, callers get 503 worker_hung. "
        "Default: max(5 s, 20x the slowest warm-up batch).",
    )
    max_failed_starts: PositiveInt = Field(
        5, description="Failed worker restarts in a row before an instance is given up (FAILED)."
    )
    required: bool = Field(
        True, description="Whether /readyz needs this model serving (with PDSERVE_STRICT_READINESS)."
    )
    versions: Literal["latest", "all"] | list[PositiveInt] = Field(
        "latest", description="Which numbered version folders to load."
    )
    random_weights: bool = Field(False, description="True when the weights are untrained (exported for tests).")
    tensorrt: TensorRT = TensorRT()
    onnxruntime: OnnxRuntime = OnnxRuntime()
    quantization: Quantization = Quantization()
    tensor: Tensor = Tensor()
    ocr: Ocr | None = Field(None, description="kind ocr: its stages, thresholds and limits.")
    tuned: dict[str, Any] | None = Field(
        None, description="Written by pdserve tune: the goal, machine, load and measurement that chose these settings."
    )
    calibration: dict[str, Any] | None = Field(
        None, description="How an int8 model was calibrated: algo, images, source, date, tool versions."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "cpu" and not re.fullmatch(r"gpu:\d+", v):
            raise ValueError("device must be 'cpu' or 'gpu:N', e.g. 'gpu:0'")
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v or any(not re.fullmatch(r"gpu:\d+", d) for d in v):
            raise ValueError("devices lists GPUs as 'gpu:N', e.g. [gpu:0, gpu:1]")
        if len(set(v)) != len(v):
            raise ValueError("devices names a GPU twice; use instances for more workers on one GPU")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.kind == "image" and (
            self.preprocessing.crop != self.input.shape[1] or self.preprocessing.crop != self.input.shape[2]
        ):
            raise ValueError(
                f"preprocessing.crop ({self.preprocessing.crop}) must equal input H and W {self.input.shape}"
            )
        shape = self.tensorrt.dynamic_shape
        if shape is not None:
            rank = len(self.input.shape) + 1
            if not len(shape.min) == len(shape.opt) == len(shape.max) == rank:
                raise ValueError(
                    f"tensorrt.dynamic_shape: min, opt and max must each have {rank} dimensions (N + input)"
                )
            if not all(lo <= mid <= hi for lo, mid, hi in zip(shape.min, shape.opt, shape.max, strict=True)):
                raise ValueError("tensorrt.dynamic_shape: needs min <= opt <= max in every dimension")
            if shape.max[0] < self.max_batch_size:
                raise ValueError(
                    f"tensorrt.dynamic_shape: max batch {shape.max[0]} is below max_batch_size {self.max_batch_size}"
                )
        if self.devices is not None and self.device not in ("cpu", self.devices[0]):
            raise ValueError(f"device {self.device} and devices {self.devices} disagree: give devices alone")
        if self.engine == "openvino" and (self.device != "cpu" or self.devices):
            raise ValueError("engine openvino runs on device cpu only")
        # A tensor batch is requests, and the sizes are the rows of one run: a stack of more rows runs in pieces.
        if self.batch_sizes is not None and max(self.batch_sizes) != self.max_batch_size and self.kind != "tensor":
            raise ValueError("the largest of batch_sizes must equal max_batch_size")
        return self

    @property
    def instance_devices(self) -> list[str]:
        """The device of each worker, in start order: ``instances`` on each of ``devices``, interleaved
        (gpu:0, gpu:1, gpu:0, ...) so that a partial start or a scale-down leaves every GPU serving."""
        if not self.devices:
            return [self.device] * self.instances
        return [d for _ in range(self.instances) for d in self.devices]

    @property
    def gpu_id(self) -> int | None:
        return int(self.device.split(":")[1]) if self.device.startswith("gpu") else None

    @property
    def trims_batches(self) -> bool:
        if self.trim_batches is not None:
            return self.trim_batches
        return self.kind == "image" and self.gpu_id is None

    @property
    def padded_batch_sizes(self) -> tuple[int, ...]:
        """Sizes batches are padded to: oneDNN allocates memory per input shape it sees."""
        if self.gpu_id is not None and self.tensorrt.enabled and self.tensorrt.shape_mode == "static":
            return (self.max_batch_size,)  # one engine shape: every batch is padded to it
        if self.batch_sizes is not None:
            return tuple(sorted(set(self.batch_sizes)))
        sizes = {1 << i for i in range(self.max_batch_size.bit_length()) if 1 << i <= self.max_batch_size}
        return tuple(sorted(sizes | {self.max_batch_size}))


def version_folders(model_dir: Path) -> dict[int, Path]:
    """The numbered version folders (``1/``, ``2/``, ...) of a model folder."""
    return {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0}


def _format_error(path: Path, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"field '{field}': {e['msg']}")
    return f"{path}: " + "; ".join(parts)


def read_config_file(model_dir: Path) -> dict[str, Any] | None:
    """``model_dir/config.yaml`` as a mapping, unvalidated; None when there is none."""
    path = model_dir / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return None
    except yaml.YAMLError as e:
        raise ModelConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{path}: must be a mapping of field: value")
    return raw


def load_model_config(model_dir: Path) -> ModelConfig:
    """Read and validate ``model_dir/config.yaml``; errors name the file and the field."""
    raw = read_config_file(model_dir)
    if raw is None:
        raise ModelConfigError(f"{model_dir / CONFIG_FILE}: missing (every model folder needs a {CONFIG_FILE})")
    return validate_config(model_dir, raw)


def validate_config(model_dir: Path, raw: dict[str, Any], source: str = CONFIG_FILE) -> ModelConfig:
    """A mapping as a ``ModelConfig``; errors name ``source`` (a file in ``model_dir``) and the field."""
    path = model_dir / source
    try:
        config = ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise ModelConfigError(_format_error(path, e)) from None
    if config.labels is not None and not (model_dir / config.labels).is_file():
        raise ModelConfigError(f"{path}: field 'labels': file {model_dir / config.labels} not found")
    return config
