"""The shipped alert rules: wired into prometheus.yml and the PrometheusRule, runbooks, real metric names."""

from __future__ import annotations

import re
from typing import Any

import yaml
from prometheus_client import Counter, Histogram

from pdserve.metrics import Metrics
from tests.helpers import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"


def alert_groups() -> list[dict[str, Any]]:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    groups: list[dict[str, Any]] = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return groups


def exported_names() -> set[str]:
    """Every sample name the app's metrics can export (counters with _total, histograms' series)."""
    metrics = Metrics()
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter | Histogram):
            family = next(iter(value.describe())).name
            suffixes = ("_total",) if isinstance(value, Counter) else ("_bucket", "_sum", "_count")
            names |= {family + s for s in suffixes}
    names |= {metric.name for metric in metrics.registry.collect()}  # gauges
    return names


def test_the_operators_alerts_exist_each_with_a_runbook_and_a_severity() -> None:
    rules = [r for g in alert_groups() for r in g["rules"]]
    names = {r["alert"] for r in rules}
    for expected in ("ErrorRatio", "LatencyP99", "QueueSaturated", "WorkerRestarts", "ModelNotReady", "Down"):
        assert any(expected in n for n in names), (expected, names)
    for rule in rules:
        assert rule["annotations"]["runbook"].strip(), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        # make prometheus-check turns the final comparison into a bool one to see the series
        assert re.search(r"\s(==|!=|>=|<=|>|<)\s*-?[0-9.]+\s*$", rule["expr"].strip()), rule["alert"]


def test_alerts_name_only_metrics_the_app_exports() -> None:
    exported = exported_names() | {"up"}
    for rule in (r for g in alert_groups() for r in g["rules"]):
        named = set(re.findall(r"\bpdserve_\w+", rule["expr"])) | ({"up"} if "up{" in rule["expr"] else set())
        assert named, rule["alert"]
        assert named <= exported, (rule["alert"], sorted(named - exported))


def test_the_prometheus_rule_for_the_operator_holds_the_same_groups() -> None:
    rule = yaml.safe_load((ROOT / "deploy" / "k8s" / "monitoring" / "prometheusrule.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["namespace"] == "pdserve"
    assert rule["spec"]["groups"] == alert_groups()


def test_compose_mounts_the_rule_files_beside_prometheus_yml() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in volumes
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose["services"]["prometheus"]["command"]
