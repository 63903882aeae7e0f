"""Settings: defaults from the contract, and malformed values stop start-up with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from app.core.config import Settings


def run_with_env(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=60
    )


def test_defaults_match_the_contract() -> None:
    s = Settings()
    assert s.auth_audience == "tessera"
    assert s.auth_tenant_claim == "tenant"
    assert s.auth_admin_scope == "platform:admin"
    assert s.auth_algorithms == ["RS256", "ES256", "EdDSA"]
    assert s.auth_leeway_seconds == 30
    assert s.rate_limit_default == "600/minute"
    assert s.rate_limit_fail_open is True
    assert s.cache_ttl_seconds == 60
    assert s.metrics_token is None
    assert s.metrics_max_tenants == 1000
    assert s.environment == "development"
    assert (s.log_level, s.log_format) == ("INFO", "json")


def test_asyncpg_scheme_is_accepted_and_normalised() -> None:
    s = Settings(database_url="postgresql+asyncpg://u:p@db:5432/x")
    assert s.asyncpg_database_url == "postgresql+asyncpg://u:p@db:5432/x"
    assert Settings(database_url="postgresql://u@h/x").asyncpg_database_url.startswith(
        "postgresql+asyncpg://"
    )


@pytest.mark.parametrize("alg", ["none", "HS256", "XYZ"])
def test_forbidden_or_unknown_algorithms_are_refused(alg: str) -> None:
    with pytest.raises(ValidationError):
        Settings(auth_algorithms=f"RS256,{alg}")


def test_production_refuses_the_dev_issuer() -> None:
    with pytest.raises(ValidationError, match="AUTH_ISSUER"):
        Settings(environment="production", database_url="postgresql://u@db/x")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AUTH_LEEWAY_SECONDS", "abc"),
        ("DATABASE_URL", "nonsense"),
        ("DATABASE_LISTEN_URL", "mysql://db/x"),
        ("DATABASE_POOLER", "statement"),
        ("REDIS_URL", "http://x"),
        ("RATE_LIMIT_DEFAULT", "lots"),
        ("AUTH_ALGORITHMS", "none"),
        ("METRICS_MAX_TENANTS", "-1"),
        ("AUTH_TOKEN_CACHE_SIZE", "-1"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_malformed_setting_exits_with_one_line_naming_it(variable: str, value: str) -> None:
    result = run_with_env(
        {variable: value}, "from app.core.config import get_settings; get_settings()"
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]


def test_uvicorn_entrypoint_exits_on_bad_config() -> None:
    result = run_with_env({"AUTH_LEEWAY_SECONDS": "abc"}, "import app.main as m; m.app")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if "AUTH_LEEWAY_SECONDS" in line
    ]


def test_the_registry_listens_on_the_direct_url_or_not_at_all_behind_a_transaction_pooler() -> None:
    pooler = "postgresql://app:pw@pgbouncer:6432/tessera"
    direct = "postgresql+asyncpg://app:pw@db:5432/tessera"
    plain = Settings(database_url=pooler)
    assert plain.listen_dsn == pooler and plain.statement_cache_size == 100
    behind = Settings(database_url=pooler, database_pooler="transaction")
    assert behind.listen_dsn is None  # no LISTEN through the pooler: TTL only
    assert behind.statement_cache_size == 0
    assert behind.direct() is behind
    with_direct = Settings(
        database_url=pooler, database_pooler="transaction", database_listen_url=direct
    )
    assert with_direct.listen_dsn == "postgresql://app:pw@db:5432/tessera"
    migrations = with_direct.direct()  # what `tessera migrate` connects with
    assert migrations.dsn == "postgresql://app:pw@db:5432/tessera"
    assert migrations.statement_cache_size == 100
    assert Settings(database_listen_url="").database_listen_url is None
