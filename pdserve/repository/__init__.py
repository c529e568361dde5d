"""The model repository: folders (``scan.py``), versions and their state (``version.py``), loading,
reloading and lookup (``repository.py``)."""

from pdserve.repository.repository import REPOSITORY_FILE, ModelRepository
from pdserve.repository.scan import ModelEntry, Overrides, model_folders, scan_model
from pdserve.repository.version import ModelState, ModelVersion

__all__ = [
    "REPOSITORY_FILE",
    "ModelEntry",
    "ModelRepository",
    "ModelState",
    "ModelVersion",
    "Overrides",
    "model_folders",
    "scan_model",
]
