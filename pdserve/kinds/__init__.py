"""Model kinds: what a model takes and answers, and how its workers run it (``base.py``: the contract).

``config.yaml``'s ``kind:`` names one of ``KINDS``. Adding a kind: a module with a ``ModelKind``
subclass, and a line here (and its name in ``ModelConfig.kind``).
"""

from __future__ import annotations

from pdserve.errors import ModelConfigError
from pdserve.kinds.base import ModelKind
from pdserve.kinds.detection import DetectionKind
from pdserve.kinds.image import ImageKind
from pdserve.kinds.ocr import OcrKind
from pdserve.kinds.tensor import TensorKind

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (ImageKind(), TensorKind(), DetectionKind(), OcrKind())}


def kind_of(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model kind {name!r}; kinds: {sorted(KINDS)}") from None
