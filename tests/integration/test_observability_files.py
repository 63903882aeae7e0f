"""deploy/prometheus and deploy/grafana: rules pass promtool, every metric they use exists, and a
real Prometheus scrapes a served Tessera."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from app.core.config import Settings
from tests.metrics_support import exposed_names
from tests.servers import ROOT, free_port, stop, uvicorn, wait_for

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "tessera.json"
# Series Prometheus makes itself, not the app.
PROMETHEUS_SYNTHETIC = {"up"}
_METRIC = re.compile(r"\b((?:http|tessera)_[a-z0-9_]+|up)\b(?=\s*[{\[)/=<>!]|\s*$|\s+(?:and|or)\b)")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package 'prometheus'; scripts/test.sh)")
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def metric_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in _METRIC.findall(expr)}


def test_promtool_checks_the_alert_rules() -> None:
    promtool = _tool("promtool")
    result = _run([promtool, "check", "rules", "alerts.yml"], PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    promtool = _tool("promtool")
    result = _run([promtool, "test", "rules", "alerts_test.yml"], PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert has at least one unit test that expects it to fire.
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts == fired


def test_promtool_checks_the_scrape_config(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    # The container path of the rules, pointed at the repository's file.
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _run([promtool, "check", "config", "prometheus.yml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]


def test_expression_parser_finds_metric_names() -> None:
    found = metric_names(
        ['sum by (le) (rate(http_request_duration_seconds_bucket{a="b"}[5m]))', "up == 0"]
    )
    assert found == {"http_request_duration_seconds_bucket", "up"}


async def test_every_metric_of_the_dashboard_and_rules_is_exposed(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/metrics")
    exposed = exposed_names(response.text)
    used = metric_names(dashboard_expressions()) | metric_names(rule_expressions())
    contract = {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "tessera_tenant_requests_total",
        "tessera_rate_limit_rejections_total",
        "tessera_cache_requests_total",
        "tessera_tenants",
        "tessera_tenant_provisioning_seconds_bucket",
    }
    assert contract <= used, "the dashboard and rules should cover every contract metric"
    assert used - PROMETHEUS_SYNTHETIC <= exposed, (used - PROMETHEUS_SYNTHETIC) - exposed


def test_dashboard_uses_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {source["uid"] for source in datasources}
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "tessera.yml").read_text()
    )["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_a_real_prometheus_scrapes_a_served_tessera(settings: Settings, tmp_path: Path) -> None:
    prometheus = _tool("prometheus")
    with uvicorn(settings, "app.main:app") as (_, base):
        for path in ("/openapi.json", "/no-such-route", "/healthz"):
            httpx.get(base + path, timeout=5)
        target = base.removeprefix("http://")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
            "scrape_configs": [
                {
                    "job_name": "tessera-api",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        api = f"http://127.0.0.1:{port}/api/v1/query"
        try:
            wait_for(f"http://127.0.0.1:{port}/-/ready", timeout=15, process=process)
            query = 'sum by (handler) (http_requests_total{job="tessera-api"})'
            deadline = time.monotonic() + 15
            results: list[dict[str, object]] = []
            while time.monotonic() < deadline and not results:
                body = httpx.get(api, params={"query": query}, timeout=5).json()
                assert body["status"] == "success", body
                results = body["data"]["result"]
                time.sleep(0.25)
        finally:
            stop(process)
    handlers = {result["metric"]["handler"] for result in results}  # type: ignore[index]
    assert {"/openapi.json", "none"} <= handlers
    assert "/healthz" not in handlers
