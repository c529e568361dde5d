"""The deployment files name only what the running app really has: metrics, probe paths, ports, settings."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pdserve.settings import Settings
from tests.helpers import MODEL_REPO, ROOT, ServerThread, running_app, sample_list

pytestmark = pytest.mark.timeout(180)
DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def live() -> Iterator[ServerThread]:
    with running_app(MODEL_REPO) as server:
        photo = sample_list(1)[0][0]
        headers = {"Content-Type": "image/jpeg"}
        assert httpx.post(f"{server.url}/predict", content=photo.read_bytes(), headers=headers).status_code == 200
        assert httpx.post(f"{server.url}/predict", content=b"junk", headers=headers).status_code == 400
        yield server


def exported_names(server: ServerThread) -> set[str]:
    text = httpx.get(f"{server.url}/metrics").text
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][\w:]*)[{ ]", text, re.MULTILINE)}


def rendered(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render deploy/k8s")
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_every_dashboard_query_names_an_exported_metric(live: ServerThread) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "pdserve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["query"])
    named = {n for e in exprs for n in re.findall(r"\bpdserve_\w+", e)}
    assert len(named) >= 10
    missing = named - exported_names(live)
    assert not missing, f"dashboard queries metrics the app does not export: {sorted(missing)}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests per second", "p99", "queue wait", "batch size", "queue depth", "errors", "workers"):
        assert topic in titles


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_probes_ports_and_hpa_metrics_exist_in_the_app(live: ServerThread, overlay: str) -> None:
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert ports["http"] == int(settings["PDSERVE_PORT"]) == Settings.model_fields["port"].default
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ports
        assert httpx.get(f"{live.url}{get['path']}").status_code == 200, f"{probe} {get['path']}"
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pod_metrics
    assert set(pod_metrics) <= exported_names(live)
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["targetPort"] in ports
    # drain: the app's whole shutdown (drain delay, answering, stopping workers) fits the grace period,
    # with no preStop sleep adding to it
    assert "lifecycle" not in container
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert shutdown_budget(settings) + 5 <= grace
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert settings["PDSERVE_DEVICE"] == "gpu:0"


def shutdown_budget(env: dict[str, str]) -> float:
    overrides: dict[str, Any] = {
        k.removeprefix("PDSERVE_").lower(): v for k, v in env.items() if k.startswith("PDSERVE_")
    }
    overrides["model_repo"] = MODEL_REPO  # /models does not exist here
    return Settings.model_validate(overrides).shutdown_budget_s


def test_compose_allows_the_whole_shutdown() -> None:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["pdserve"]
    grace = int(service["stop_grace_period"].removesuffix("s"))
    assert shutdown_budget(service["environment"]) + 5 <= grace


def test_configmap_keys_are_real_settings() -> None:
    for overlay in ("cpu", "gpu"):
        data = next(d for d in rendered(overlay) if d["kind"] == "ConfigMap")["data"]
        fields = {k.removeprefix("PDSERVE_").lower() for k in data}
        assert fields <= set(Settings.model_fields), sorted(fields - set(Settings.model_fields))


def test_adapter_rule_and_service_monitor_name_real_things(live: ServerThread) -> None:
    rules = yaml.safe_load((DEPLOY / "k8s" / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    series = [re.match(r"\w+", r["seriesQuery"]).group(0) for r in rules["rules"]["custom"]]  # type: ignore[union-attr]
    assert set(series) <= exported_names(live)
    hpa = yaml.safe_load((DEPLOY / "k8s" / "base" / "hpa.yaml").read_text())
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"} <= set(series)
    monitor = yaml.safe_load((DEPLOY / "k8s" / "monitoring" / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_dockerfile_and_compose_point_at_real_endpoints(live: ServerThread) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "EXPOSE 8000" in dockerfile
    for path in set(re.findall(r"127\.0\.0\.1:8000(/\w+)", dockerfile)):
        assert httpx.get(f"{live.url}{path}").status_code == 200
    # the same install steps as `make serve`: the locked dependencies first, then the package
    cpu = dockerfile[dockerfile.index("AS cpu-build") :]
    assert cpu.index("make VENV=/opt/venv /opt/venv/.deps") < cpu.index("COPY pdserve ./pdserve")
    assert "make VENV=/opt/venv EDITABLE= /opt/venv/.serve" in cpu
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    target = scrape["scrape_configs"][0]["static_configs"][0]["targets"][0]
    host, port = target.split(":")
    assert host in compose["services"]
    assert scrape["scrape_configs"][0]["metrics_path"] == "/metrics"
    assert int(port) == 8000


def test_kserve_inference_service_is_sound_offline(live: ServerThread, tmp_path: Path) -> None:
    """No KServe CRD schema is available offline: the container is validated as a core Pod spec by
    kubernetes-validate --strict, and its probes, port and settings are checked against the app."""
    isvc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    container = predictor["containers"][0]
    assert container["name"] == "kserve-container"  # the name KServe routes to
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = {k.removeprefix("PDSERVE_").lower() for k in env}
    assert fields <= set(Settings.model_fields)
    assert container["ports"][0]["containerPort"] == int(env["PDSERVE_PORT"])
    for probe in ("readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert path.startswith("/v2/")
        assert httpx.get(f"{live.url}{path}").status_code == 200
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pdserve-predictor"},
        "spec": {"containers": predictor["containers"], "volumes": predictor["volumes"]},
    }
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod))
    validator = Path(sys.executable).parent / "kubernetes-validate"
    checked = subprocess.run([str(validator), "--strict", "--quiet", str(manifest)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
