"""The deployment files agree with the server: a worker's start timeout ends before the startup probe gives up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pdserve.settings import Settings
from tests.helpers import ROOT

K8S = ROOT / "deploy" / "k8s"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _container(path: Path) -> dict[str, Any]:
    (deployment,) = [d for d in _docs(path) if d.get("kind") == "Deployment"]
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "pdserve"]
    return dict(container)


def _settings(*paths: Path) -> dict[str, str]:
    """The ConfigMap's data as kustomize's configMapGenerator makes it from env files (later wins)."""
    merged: dict[str, str] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                merged[key.strip()] = value.strip()
    return merged


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_worker_start_timeout_ends_a_minute_or_two_before_the_startup_probe(overlay: str) -> None:
    probe = _container(K8S / "base" / "deployment.yaml")["startupProbe"]
    patches = sorted((K8S / "overlays" / overlay).glob("*.yaml"))
    for patch in patches:
        if any(d.get("kind") == "Deployment" for d in _docs(patch)):
            probe = {**probe, **_container(patch).get("startupProbe", {})}
    window = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
    settings = _settings(K8S / "base" / "settings.env", *sorted((K8S / "overlays" / overlay).glob("*.env")))
    default = Settings.model_fields["worker_start_timeout_s"].default
    timeout = float(settings.get("PDSERVE_WORKER_START_TIMEOUT_S", default))
    assert timeout < window, f"{overlay}: workers get {timeout} s, the startup probe only {window} s"
    assert window - timeout <= 120, f"{overlay}: the probe waits {window - timeout} s past the worker timeout"


def test_gpu_pods_build_their_engines_into_their_own_cache_before_serving() -> None:
    (deployment,) = [
        d for d in _docs(K8S / "overlays" / "gpu" / "deployment-gpu.yaml") if d.get("kind") == "Deployment"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["pdserve", "build-engines"]
    assert init["envFrom"] == _container(K8S / "base" / "deployment.yaml")["envFrom"]  # the server's settings
    cache = _settings(K8S / "overlays" / "gpu" / "settings-gpu.env")["PDSERVE_TRT_CACHE_DIR"]
    server = _container(K8S / "overlays" / "gpu" / "deployment-gpu.yaml")
    for container in (init, server):
        assert {"name": "trt-cache", "mountPath": cache} in container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "trt-cache"]
    assert "emptyDir" in volume  # per pod: never one ReadWriteOnce volume shared by replicas


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_hpa_owns_the_replica_count_and_pods_spread_over_nodes(overlay: str) -> None:
    for path in [K8S / "base" / "deployment.yaml", *sorted((K8S / "overlays" / overlay).glob("*.yaml"))]:
        for doc in _docs(path):
            if doc.get("kind") == "Deployment":
                assert "replicas" not in doc["spec"], f"{path}: the HPA owns the count"
    (deployment,) = [d for d in _docs(K8S / "base" / "deployment.yaml") if d.get("kind") == "Deployment"]
    keys = {c["topologyKey"] for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
