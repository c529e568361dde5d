"""Run the shipped Prometheus configuration, dashboards and alerts against a live pdserve.

Prometheus (Debian's package, or any ``prometheus`` on PATH) scrapes a ``pdserve serve`` started
from this checkout with the shipped model repository, through ``deploy/prometheus/prometheus.yml``
with only the scrape target and the intervals replaced (``--scrape-interval``, 2 s by default, so
that rates have samples after seconds instead of minutes). After some load (good images to both
models, and broken ones, so that the error series exist), every PromQL expression of the Grafana
dashboards in ``deploy/grafana/dashboards`` and of the rule files named by prometheus.yml is
evaluated through ``/api/v1/query`` and must succeed and return series:

- dashboard variables as Grafana would send them: ``$model`` the alternation of every model
  (``All``), ``$__rate_interval`` four scrape intervals, ``$__range`` the time since the load began;
  the ``label_values(metric, label)`` variable query through ``/api/v1/label/<label>/values``;
- each alert with its final comparison made a ``bool`` one (``x > 0.05`` -> ``x > bool 0.05``), so
  a quiet server still returns its series (value 0: not firing); the rule files keep to that form;
- Prometheus's own evaluation of the rules (``/api/v1/rules``) must report every rule healthy.

``promtool check config`` (the shipped file and the one run) and ``promtool check rules`` run
first. Prints a table and, with ``--json``, writes the results.

    .venv/bin/python scripts/check_prometheus.py [--load-s 20] [--json build/prometheus-check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.served import Served, free_port  # noqa: E402

DEPLOY = ROOT / "deploy"
SHIPPED_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
JPEG = {"Content-Type": "image/jpeg"}
COMPARISON = re.compile(r"\s(==|!=|>=|<=|>|<)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$")


@dataclass
class Expression:
    source: str  # where it comes from: "dashboard pdserve.json: <panel>" or "alert <name>"
    promql: str  # as shipped
    query: str  # as sent


@dataclass
class Outcome:
    expression: Expression
    error: str | None
    series: int

    @property
    def ok(self) -> bool:
        return self.error is None and self.series > 0


def fail(message: str) -> NoReturn:
    raise SystemExit(f"prometheus-check FAILED: {message}")


def promtool(promtool_bin: str, *args: str) -> str:
    done = subprocess.run([promtool_bin, *args], capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def rule_files(config_path: Path) -> list[Path]:
    config = yaml.safe_load(config_path.read_text())
    return [config_path.parent / name for name in config.get("rule_files") or []]


def run_config(target: str, scrape_interval_s: int) -> dict[str, Any]:
    """The shipped prometheus.yml with the target and intervals replaced, rule files made absolute."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    interval = f"{scrape_interval_s}s"
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(p) for p in rule_files(SHIPPED_CONFIG)]
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == "pdserve"]
    if len(jobs) != 1 or len(jobs[0]["static_configs"]) != 1:
        fail("prometheus.yml: expected one pdserve job with one static target")
    jobs[0]["static_configs"][0]["targets"] = [target]
    return dict(config)


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for item in items:
        found.append(item)
        found += panels(item.get("panels") or [])  # rows hold their panels
    return found


def dashboard_expressions(models: list[str], scrape_interval_s: int, range_s: int) -> list[Expression]:
    values = {
        "$__rate_interval": f"{4 * scrape_interval_s}s",  # Grafana: max(4 x scrape interval, interval + scrape)
        "$__range": f"{range_s}s",
        "$__interval": f"{scrape_interval_s}s",
        "$model": "|".join(re.escape(m) for m in models),  # "All" of a multi-value variable
    }
    found = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard.get("panels") or []):
            for target in panel.get("targets") or []:
                promql = target.get("expr")
                if not promql:
                    continue
                query = promql
                for name, value in values.items():
                    query = query.replace(name, value)
                if "$" in query:
                    fail(f"{path.name}: unknown variable in {promql!r}")
                found.append(Expression(f"{path.name}: {panel.get('title')}", promql, query))
    return found


def template_queries() -> list[tuple[str, str, str]]:
    """(dashboard, metric, label) of every label_values(metric, label) variable."""
    found = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for variable in json.loads(path.read_text()).get("templating", {}).get("list", []):
            query = variable.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", (query or "").strip())
            if variable.get("type") != "query":
                continue
            if not match:
                fail(f"{path.name}: variable {variable.get('name')}: unsupported query {query!r}")
            found.append((path.name, match.group(1), match.group(2)))
    return found


def rule_expressions() -> list[Expression]:
    found = []
    for path in rule_files(SHIPPED_CONFIG):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                promql = rule["expr"].strip()
                if "alert" in rule:
                    match = COMPARISON.search(promql)
                    if not match:
                        fail(f"alert {rule['alert']}: expression must end in a comparison with a number")
                    if not rule.get("annotations", {}).get("runbook"):
                        fail(f"alert {rule['alert']}: no runbook annotation")
                    query = f"{promql[: match.start()]} {match.group(1)} bool {match.group(2)}"
                    found.append(Expression(f"{path.name}: alert {rule['alert']}", promql, query))
                else:
                    found.append(Expression(f"{path.name}: record {rule['record']}", promql, promql))
    return found


class Prometheus:
    def __init__(self, binary: str, config: Path, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (data.parent / "prometheus.log").open("wb")
        command = [binary, f"--config.file={config}", f"--storage.tsdb.path={data}"]
        command += [f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"prometheus exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        fail("prometheus not ready")

    def query(self, promql: str) -> tuple[str | None, int]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}).json()
        if answer["status"] != "success":
            return f"{answer.get('errorType')}: {answer.get('error')}", 0
        data = answer["data"]
        return None, len(data["result"]) if data["resultType"] in ("vector", "matrix") else 1

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def load(url: str, models: list[str], photos: list[bytes], seconds: float, errors: list[str]) -> int:
    """Closed-loop clients for ``seconds``: photos to every model, and one broken image in ten."""
    sent = [0]
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as http:
            i = k
            while time.monotonic() < stop:
                model = models[(i // 4) % len(models)]  # both models, good and broken images
                bad = i % 10 == 9
                body = b"not an image" if bad else photos[i % len(photos)]
                r = http.post(f"{url}/predict", params={"model": model}, content=body, headers=JPEG)
                if r.status_code != (400 if bad else 200):
                    errors.append(f"{model}: {r.status_code} {r.text[:200]}")
                sent[0] += 1
                i += 4

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent[0]


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    fail(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default=shutil.which("prometheus"))
    parser.add_argument("--promtool", default=shutil.which("promtool"))
    parser.add_argument("--scrape-interval-s", type=int, default=2)
    parser.add_argument("--load-s", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if not args.prometheus or not args.promtool:
        fail("prometheus and promtool not found (Debian: apt-get install -y prometheus)")

    # promtool on the shipped files first: a broken file needs no server to be found.
    checks = [promtool(args.promtool, "check", "config", str(SHIPPED_CONFIG))]
    checks += [promtool(args.promtool, "check", "rules", str(p)) for p in rule_files(SHIPPED_CONFIG)]
    dashboards_first = dashboard_expressions(["m"], args.scrape_interval_s, 60)  # fails early on bad variables
    files = len(rule_files(SHIPPED_CONFIG))
    print(f"promtool: config and {files} rule file(s) pass; {len(dashboards_first)} dashboard expressions")

    samples = Path(os.environ.get("PDSERVE_SAMPLE_DATA", ROOT.parent / "shared" / "data" / "imagenet-sample"))
    photos = [p.read_bytes() for p in sorted((samples / "images").glob("*.JPEG"))[:8]]
    if not photos:
        fail(f"no sample photos in {samples}")

    with tempfile.TemporaryDirectory(prefix="pdserve-prometheus-") as tmp, Served(ROOT / "model_repo") as server:
        target = server.url.removeprefix("http://")
        config_path = Path(tmp) / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(run_config(target, args.scrape_interval_s), sort_keys=False))
        checks.append(promtool(args.promtool, "check", "config", str(config_path)))
        models = sorted(m["name"] for m in httpx.get(f"{server.url}/models").json()["models"])
        prometheus = Prometheus(args.prometheus, config_path, Path(tmp) / "data")
        try:
            prometheus.wait_ready()
            wait_for(lambda: prometheus.query('up{job="pdserve"} == 1')[1], 60, "the first scrape")
            began = time.monotonic()
            errors: list[str] = []
            sent = load(server.url, models, photos, args.load_s, errors)
            if errors:
                fail(f"{len(errors)} unexpected answers under load, e.g. {errors[:3]}")
            # Enough scrapes after the load for every rate window to hold two samples of it.
            time.sleep(2 * args.scrape_interval_s)
            count = f'count_over_time(up{{job="pdserve"}}[{int(time.monotonic() - began) + 1}s])'
            wait_for(lambda: prometheus.query(count)[1], 30, "scrapes during the load")
            rules_ok = wait_for(lambda: evaluated_rules(prometheus), 60, "a rule evaluation after the load")
            range_s = int(time.monotonic() - began) + 2 * args.scrape_interval_s
            outcomes = [
                Outcome(e, *prometheus.query(e.query))
                for e in dashboard_expressions(models, args.scrape_interval_s, range_s) + rule_expressions()
            ]
            labels = []
            for dashboard, metric, label in template_queries():
                values = httpx.get(f"{prometheus.url}/api/v1/label/{label}/values", params={"match[]": metric})
                found = values.json()["data"]
                labels.append({"dashboard": dashboard, "query": f"label_values({metric}, {label})", "values": found})
            firing = [
                a["labels"]["alertname"] for a in httpx.get(f"{prometheus.url}/api/v1/alerts").json()["data"]["alerts"]
            ]
        finally:
            prometheus.stop()

    print(f"load: {sent} requests over {args.load_s:.0f} s to {', '.join(models)} (one in ten a broken image)")
    width = max(len(o.expression.source) for o in outcomes)
    for o in outcomes:
        verdict = "ok" if o.ok else f"FAILED ({o.error or 'no series'})"
        print(f"{o.expression.source:<{width}}  {o.series:>3} series  {verdict}")
    for entry in labels:
        print(f"{entry['dashboard']}: {entry['query']} -> {entry['values']}")
    print(f"rules evaluated by Prometheus: {len(rules_ok)}, all healthy; firing now: {firing or 'none'}")
    result = {
        "prometheus": subprocess.run([args.prometheus, "--version"], capture_output=True, text=True).stdout.split("\n")[
            0
        ],
        "promtool": checks,
        "scrape_interval_s": args.scrape_interval_s,
        "requests": sent,
        "models": models,
        "expressions": [
            {"source": o.expression.source, "query": o.expression.query, "series": o.series, "error": o.error}
            for o in outcomes
        ],
        "template_variables": labels,
        "rules_healthy": len(rules_ok),
        "firing": firing,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    bad = [o for o in outcomes if not o.ok]
    missing = [e for e in labels if sorted(e["values"]) != models]
    if bad or missing:
        fail(f"{len(bad)} expressions without series or with errors; variables not listing every model: {missing}")
    print(f"prometheus-check: {len(outcomes)} expressions evaluated, all returned series")
    return 0


def evaluated_rules(prometheus: Prometheus) -> list[str]:
    """Names of all rules once Prometheus has evaluated each (health ok); fails on any that errs."""
    groups = httpx.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    unhealthy = [f"{r['name']}: {r.get('lastError')}" for r in rules if r.get("health") == "err"]
    if unhealthy:
        fail(f"rules Prometheus could not evaluate: {unhealthy}")
    if not rules or any(r.get("health") != "ok" for r in rules):
        return []
    return [r["name"] for r in rules]


if __name__ == "__main__":
    sys.exit(main())
