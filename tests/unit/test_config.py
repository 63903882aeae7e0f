"""Settings: defaults from the contract, and malformed values stop start-up with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.core.config import Settings, role_prefix_problem
from app.db.tenancy import schema_for, slug_problem


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


READ_SETTINGS = "from app.core.config import get_settings; get_settings()"
PRODUCTION = {
    "environment": "production",
    "auth_issuer": "https://issuer.example",
    "database_url": "postgresql://u@db.example:5432/tessera",
}


def test_production_refuses_metrics_open_to_anyone() -> None:
    with pytest.raises(ValidationError, match="METRICS_TOKEN: production refuses /metrics"):
        Settings(**PRODUCTION)


def test_production_serves_metrics_with_a_token_or_when_said_public() -> None:
    assert Settings(**PRODUCTION, metrics_token="m" * 32).metrics_token == "m" * 32
    assert Settings(**PRODUCTION, metrics_public=True).metrics_public is True
    assert Settings(metrics_public=False).metrics_token is None  # development: open, as before


def test_metrics_public_and_a_metrics_token_contradict_each_other() -> None:
    with pytest.raises(ValidationError, match="METRICS_PUBLIC"):
        Settings(metrics_public=True, metrics_token="m" * 32)


def test_production_with_open_metrics_stops_start_up_with_one_line() -> None:
    env = {key.upper(): value for key, value in PRODUCTION.items()}
    result = run_with_env(env, READ_SETTINGS)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: METRICS_TOKEN: production refuses"), line
    assert "METRICS_PUBLIC=true" in line
    opted_out = run_with_env({**env, "METRICS_PUBLIC": "true"}, READ_SETTINGS)
    assert opted_out.returncode == 0, opted_out.stderr


@pytest.mark.parametrize("prefix", ["", "staging_", "t1a2b3_", "pgx_", "a" * 15 + "_"])
def test_role_prefixes_that_name_plain_distinct_roles_are_accepted(prefix: str) -> None:
    assert Settings(db_tenant_role_prefix=prefix).db_tenant_role_prefix == prefix


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("1abc_", "starting with a letter"),  # not a plain identifier
        ("pg_", "reserved by PostgreSQL"),  # CREATE ROLE refuses: a 500 per tenant create
        ("tenant_", "unprefixed database"),  # tenant_ + tenant_abc == "" + tenant_tenant_abc
        ("staging", "ending in '_'"),  # the rule that makes a prefix readable off a role
        ("a_b_", "its only underscore"),  # "a_" + "b_tenant_x" vs "a_b_" + "tenant_x"
        ("Staging_", "lowercase"),
        ("_", "starting with a letter"),
        ("a" * 16 + "_", "at most 16"),  # 17 + len("tenant_") + 40 > 63
    ],
)
def test_role_prefixes_that_could_clash_or_break_role_names_stop_start_up(
    prefix: str, why: str
) -> None:
    with pytest.raises(ValidationError, match="DB_TENANT_ROLE_PREFIX|db_tenant_role_prefix") as err:
        Settings(db_tenant_role_prefix=prefix)
    assert why in str(err.value)
    result = run_with_env({"DB_TENANT_ROLE_PREFIX": prefix}, READ_SETTINGS)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: DB_TENANT_ROLE_PREFIX:"), line


# With the names that would clash if the rules let them (issue 15's example among them).
SLUGS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9]{0,5}(-[a-z0-9]{1,4}){0,3}", fullmatch=True),
    st.sampled_from(["abc", "tenant-abc", "b-tenant-abc", "a-b-tenant-abc"]),
).filter(lambda slug: slug_problem(slug) is None)
PREFIXES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
    st.sampled_from(["", "a_", "a_b_", "tenant_", "pg_", "1a_"]),
).filter(lambda prefix: role_prefix_problem(prefix) is None)


@given(first=st.tuples(PREFIXES, SLUGS), second=st.tuples(PREFIXES, SLUGS))
def test_two_accepted_prefixes_never_give_two_tenants_one_role(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    """Two databases with different prefixes (or one database, two slugs) never share a role
    name, and every name is a plain identifier PostgreSQL keeps whole and does not reserve."""
    roles = [schema_for(slug, prefix).role for prefix, slug in (first, second)]
    assert (roles[0] == roles[1]) == (first == second)
    for role in roles:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", role) and len(role) <= 63
        assert not role.startswith("pg_")


def test_the_longest_slug_under_the_longest_prefix_still_fits_an_identifier() -> None:
    role = schema_for("a" * 40, "p" * 15 + "_").role
    assert len(role) == 63


def test_no_two_accepted_prefixes_share_a_role_among_the_names_built_to_clash() -> None:
    """Every pair of candidate (prefix, slug) that the rules accept, exhaustively: the
    rejected candidates are exactly the ones that would clash or break a name."""
    candidates = ["", "a_", "ab_", "a_b_", "t_", "tenant_", "pg_", "1a_", "ten", "staging_", "s_"]
    slugs = [
        "abc",
        "tenant-abc",
        "b-tenant-abc",
        "a-b-tenant-abc",
        "tenant-tenant-abc",
        "staging-tenant-abc",
        "s-tenant-abc",
        "t-tenant-abc",
    ]
    accepted = [prefix for prefix in candidates if role_prefix_problem(prefix) is None]
    assert accepted == ["", "a_", "ab_", "t_", "staging_", "s_"]
    owners: dict[str, tuple[str, str]] = {}
    for prefix in accepted:
        for slug in slugs:
            role = schema_for(slug, prefix).role
            assert owners.setdefault(role, (prefix, slug)) == (prefix, slug), role
