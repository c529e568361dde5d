"""Bearer keys and what callers without the admin key may see."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pdserve.api.auth import redact


def test_redaction_keeps_relative_roots_and_api_routes_intact() -> None:
    def request(root: str) -> Any:
        settings = SimpleNamespace(admin_key=None, admin_key_file=None)
        service = SimpleNamespace(settings=settings, repository_root=Path(root))
        return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(service=service)), headers={})

    message = "model 'm' v1.2: use POST /v2/models/m/infer; worker pid 42 died"
    assert redact(message, request(".")) == "model 'm' v1.2: use POST /v2/models/m/infer; worker died"
    absolute = f"{Path.cwd()}/m/config.yaml: field 'x'"
    assert redact(absolute, request(".")) == "m/config.yaml: field 'x'"
    assert redact("/tmp/elsewhere/weights.bin is broken", request("/srv/repo")) == "weights.bin is broken"
