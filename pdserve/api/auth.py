"""Bearer keys: one for the management API (required; without one configured it is disabled), an
optional one for inference. Compared in constant time. ``/metrics``, ``/healthz`` and ``/readyz``
stay open. Callers without the admin key never see file system paths or pids in error messages."""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from pdserve.errors import Forbidden, Unauthorized
from pdserve.settings import Settings

_PID = re.compile(r"\s*\bpid \d+")
# An absolute file-system path (not an API route such as /v2/models/m/infer): keep its last part.
_PATH = re.compile(
    r"(?<![\w.])/(?:tmp|home|root|usr|opt|var|srv|etc|mnt|data|models|work|proc|dev|lib|run|media|app)/"
    r"(?:[\w.@+-]+/)*([\w.@+-]+)"
)


def _bearer_of(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _bearer(request: Request) -> str | None:
    return _bearer_of(request.headers.get("authorization", ""))


def admin_key(settings: Settings) -> str | None:
    if settings.admin_key_file is not None:
        try:  # read on each use, so a rotated Secret takes effect without a restart
            return settings.admin_key_file.read_text().strip() or None
        except OSError:
            return None
    return settings.admin_key.get_secret_value() if settings.admin_key is not None else None


def _matches(given: str | None, key: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


def is_admin(request: Request) -> bool:
    key = admin_key(request.app.state.service.settings)
    return key is not None and _matches(_bearer(request), key)


async def require_admin(request: Request) -> None:
    key = admin_key(request.app.state.service.settings)
    if key is None:
        raise Forbidden("the management API is disabled: set PDSERVE_ADMIN_KEY or PDSERVE_ADMIN_KEY_FILE")
    if not _matches(_bearer(request), key):
        raise Unauthorized("the management API needs 'Authorization: Bearer <admin key>'")


def api_key_matches(settings: Settings, authorization: str) -> bool:
    """Whether an ``Authorization`` header value passes the inference key (always, when none is set)."""
    return settings.api_key is None or _matches(_bearer_of(authorization), settings.api_key.get_secret_value())


async def require_api_key(request: Request) -> None:
    if not api_key_matches(request.app.state.service.settings, request.headers.get("authorization", "")):
        raise Unauthorized("inference needs 'Authorization: Bearer <api key>'")


def redact(message: str, request: Request) -> str:
    """Without the admin key, no paths or pids: model folders are named relative to the repository."""
    if "/" not in message and "pid" not in message:
        return message  # nothing to hide: no need to read the admin key (a file, maybe) or resolve paths
    if is_admin(request):
        return message
    root: Path = request.app.state.service.repository_root
    # only absolute forms: a relative root such as "." must not rewrite every dot of a message
    for prefix in {str(root.resolve()), *([str(root)] if root.is_absolute() else [])}:
        message = message.replace(prefix + "/", "").replace(prefix, "<repository>")
    return _PATH.sub(r"\1", _PID.sub("", message))


Admin = Annotated[None, Depends(require_admin)]
ApiKey = Annotated[None, Depends(require_api_key)]
