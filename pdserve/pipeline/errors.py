"""The offline tools' errors: ``pdserve`` prints the message and exits 2 (a usage or input problem)
or 1 (``GateFailed``: a gate such as --max-drop was not met)."""

from __future__ import annotations

from pdserve.errors import PdserveError


class PipelineError(PdserveError):
    """A user error in an offline command: a clear message and exit code 2."""

    code = "pipeline_error"
    exit_code = 2


class GateFailed(PipelineError):
    """A quality gate said no (``evaluate --max-drop``): exit code 1, as a failed check."""

    exit_code = 1
