"""Settings: the one module that reads the environment (CONTRACT section 2)."""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_ISSUER = "http://127.0.0.1:8001"
DEV_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/tessera"
DEV_REDIS_URL = "redis://127.0.0.1:6379/0"
FORBIDDEN_ALGORITHMS = {"none", "HS256", "HS384", "HS512"}
SUPPORTED_ALGORITHMS = {
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",  # RFC 9864's name for EdDSA over Ed25519, which issuers are moving to
}


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    environment: Literal["development", "test", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    database_url: str = DEV_DATABASE_URL
    # Pool: one shared pool for every tenant; connections are recycled because each backend
    # caches catalog entries for every schema it touched (about 40 KiB per schema).
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    db_max_overflow: int = Field(default=10, ge=0, le=1000)
    db_pool_recycle_seconds: int = Field(default=600, ge=1)
    # ... and retired once they have been pinned to this many tenant schemas.
    db_max_schemas_per_connection: int = Field(default=500, ge=1)
    db_pool_timeout_seconds: float = Field(default=3.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    db_command_timeout_seconds: float = Field(default=30.0, gt=0)
    # Each statement of an API request (migrations and the CLI use the one above): below the
    # contract's 5 s, so a database that stops answering costs a 503, never a hang.
    db_request_timeout_seconds: float = Field(default=4.0, gt=0, le=30)
    # 0 behind PgBouncer in transaction mode (prepared statements do not survive there);
    # DATABASE_POOLER=transaction implies it.
    db_statement_cache_size: int = Field(default=100, ge=0)
    # What DATABASE_URL points at: PostgreSQL (or a session-mode pooler), or a transaction
    # pooler (PgBouncer pool_mode=transaction), through which nothing session-level works:
    # no prepared statements, no LISTEN.
    database_pooler: Literal["none", "transaction"] = "none"
    # A direct PostgreSQL URL (past the pooler) for the tenant registry's change
    # notifications and for migrations. Unset: both use DATABASE_URL, except that behind a
    # transaction pooler the registry does not LISTEN at all and stays on its TTL.
    database_listen_url: str | None = None

    # Tenant roles are cluster-wide in PostgreSQL; a prefix keeps several Tessera databases
    # on one server (staging beside test, say) from sharing role names (see the validator).
    db_tenant_role_prefix: str = ""

    redis_url: str = DEV_REDIS_URL
    redis_cluster: bool = False
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=10)

    auth_issuer: str = DEV_ISSUER
    auth_jwks_url: str | None = None
    auth_audience: str = "tessera"
    auth_tenant_claim: str = Field(default="tenant", min_length=1)
    auth_admin_scope: str = Field(default="platform:admin", min_length=1)
    auth_algorithms: Annotated[list[str], NoDecode] = ["RS256", "ES256", "EdDSA"]
    auth_leeway_seconds: int = Field(default=30, ge=0, le=3600)
    auth_jwks_timeout_seconds: float = Field(default=3.0, gt=0)
    auth_jwks_refresh_cooldown_seconds: float = Field(default=30.0, ge=0)
    # Verified tokens a replica remembers until they expire (least recently used out first):
    # size it to the tokens in use at once, or each one past it pays the signature again.
    auth_token_cache_size: int = Field(default=10_000, ge=0, le=10_000_000)

    rate_limit_default: str = "600/minute"
    rate_limit_fail_open: bool = True

    cache_ttl_seconds: int = Field(default=60, ge=0)
    # Below 1 s so that, with the lookup's own latency, a suspend or plan change is in force
    # on every replica within the contract's 1 second: how long an entry lives, or, while
    # change notifications are proven to arrive, how far behind them it may be.
    tenant_registry_ttl_seconds: float = Field(default=0.8, ge=0, le=0.9)
    # How long a deleted tenant stays restorable before `tessera tenants purge` may drop it;
    # 0 purges it at once, within the DELETE (decision 0023).
    tenant_purge_grace_seconds: int = Field(default=7 * 24 * 3600, ge=0)

    # Fair share of the pool (docs/decisions/0026-fair-share-of-the-pool.md), the defaults
    # when a tenant's plan says nothing. At most this many transactions of one tenant at
    # once on each replica (0: no cap), half the default pool; one past it waits up to
    # TENANT_BUSY_WAIT_SECONDS for its tenant's next free slot, never on the shared pool,
    # then answers 429 tenant_busy. FAIR_SHARE_ENABLED=false lifts every cap (the
    # benchmark's comparison run); the statement timeout stays.
    tenant_max_concurrent_transactions: int = Field(default=10, ge=0, le=10_000)
    tenant_busy_wait_seconds: float = Field(default=1.0, ge=0, le=30)
    fair_share_enabled: bool = True
    # Each statement of a tenant's transaction (0: none): below DB_REQUEST_TIMEOUT_SECONDS,
    # so the server ends a runaway query (503 statement_timeout) before the client gives up.
    tenant_statement_timeout_ms: int = Field(default=3000, ge=0, le=3_600_000)

    # How often the kept usage figures (rows, storage) are measured; 0: only by the CLI.
    usage_refresh_seconds: float = Field(default=60.0, ge=0)

    metrics_token: str | None = None
    # Production refuses /metrics without a token unless this says it is meant (a port only
    # the scraper reaches): the metrics name every tenant with its traffic.
    metrics_public: bool = False
    metrics_max_tenants: int = Field(default=1000, ge=0)

    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # The one body past MAX_BODY_BYTES: a tenant archive to import (streamed, never held).
    archive_max_bytes: int = Field(default=8 * 1024**3, ge=1)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return _postgresql_url(value)

    @field_validator("database_listen_url")
    @classmethod
    def _database_listen_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return _postgresql_url(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix", "redis+cluster"):
            raise ValueError("must be a redis://, rediss://, unix:// or redis+cluster:// URL")
        return value

    @field_validator("auth_issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("auth_jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("auth_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("auth_algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one algorithm")
        for alg in value:
            if alg in FORBIDDEN_ALGORITHMS or alg.lower() == "none":
                raise ValueError(f"{alg} is never accepted (only asymmetric algorithms)")
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"unsupported algorithm {alg!r}")
        return value

    @field_validator("db_tenant_role_prefix")
    @classmethod
    def _role_prefix(cls, value: str) -> str:
        problem = role_prefix_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("rate_limit_default")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        validate_rate_limit(value)
        return value

    @model_validator(mode="after")
    def _production_guard(self) -> Settings:
        if self.environment == "production":
            if self.auth_issuer == DEV_ISSUER:
                raise ValueError("AUTH_ISSUER: production refuses the development issuer")
            if self.database_url == DEV_DATABASE_URL:
                raise ValueError("DATABASE_URL: production refuses the development default")
            if self.metrics_token is not None and len(self.metrics_token) < 16:
                raise ValueError("METRICS_TOKEN: must be at least 16 characters in production")
            if self.metrics_token is None and not self.metrics_public:
                raise ValueError(
                    "METRICS_TOKEN: production refuses /metrics open to anyone (it names every "
                    "tenant); set METRICS_TOKEN, or METRICS_PUBLIC=true if only your scraper "
                    "can reach the port"
                )
        if self.metrics_public and self.metrics_token:
            raise ValueError("METRICS_PUBLIC: true contradicts METRICS_TOKEN; set one of them")
        return self

    @property
    def asyncpg_database_url(self) -> str:
        """The URL in SQLAlchemy's asyncpg dialect form."""
        scheme, rest = self.database_url.split("://", 1)
        return f"postgresql+asyncpg://{rest}"

    @property
    def dsn(self) -> str:
        """The URL in libpq form, for asyncpg and psql."""
        return _libpq(self.database_url)

    @property
    def statement_cache_size(self) -> int:
        """asyncpg's and SQLAlchemy's prepared-statement caches: none through a transaction
        pooler."""
        return 0 if self.database_pooler == "transaction" else self.db_statement_cache_size

    @property
    def listen_dsn(self) -> str | None:
        """Where the tenant registry LISTENs (libpq form): DATABASE_LISTEN_URL, else
        DATABASE_URL unless that is a transaction pooler (None: no LISTEN, TTL only)."""
        if self.database_listen_url is not None:
            return _libpq(self.database_listen_url)
        return None if self.database_pooler == "transaction" else self.dsn

    def direct(self) -> Settings:
        """These settings with DATABASE_URL past the pooler when DATABASE_LISTEN_URL names
        a way there: what `tessera migrate` connects with (DDL and advisory locks)."""
        if self.database_listen_url is None:
            return self
        return self.model_copy(
            update={"database_url": self.database_listen_url, "database_pooler": "none"}
        )


def _postgresql_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise ValueError("must be a postgresql:// URL")
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("must name a host")
    if not parts.path.strip("/"):
        raise ValueError("must name a database")
    return value


def _libpq(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


# A tenant's role is DB_TENANT_ROLE_PREFIX + "tenant_" + its slug with hyphens as underscores
# (app/db/tenancy.py::schema_for), and slugs are 3-40 of ^[a-z][a-z0-9]*(-[a-z0-9]+)*$. With a
# prefix of letters and digits ending in its only underscore, the prefix is everything up to
# a role's first underscore; with none, that is "tenant". So no two prefixes can produce
# the same role as long as "tenant_" itself is refused (it would turn slug "tenant-abc" of an
# unprefixed database into "abc" of this one). "pg_" is PostgreSQL's reserved role prefix, a
# leading letter keeps names plain identifiers, and 16 + len("tenant_") + 40 = 63, the
# longest identifier PostgreSQL keeps whole.
ROLE_PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9]*_")
ROLE_PREFIX_MAX = 16


def role_prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot prefix tenant role names, or None when it can (empty: none)."""
    if not prefix:
        return None
    if not ROLE_PREFIX_PATTERN.fullmatch(prefix):
        return (
            "must be empty, or lowercase letters and digits starting with a letter and "
            "ending in '_' (its only underscore), such as 'staging_'"
        )
    if len(prefix) > ROLE_PREFIX_MAX:
        return f"must be at most {ROLE_PREFIX_MAX} characters (role names stop at 63)"
    if prefix == "pg_":
        return "'pg_' is reserved by PostgreSQL"
    if prefix == "tenant_":
        return "'tenant_' would give the roles of an unprefixed database's tenants"
    return None


def validate_rate_limit(value: str) -> None:
    """Raise ValueError unless `value` is `limits` notation, several joined by `;`."""
    try:
        items = parse_many(value)
    except ValueError as exc:
        raise ValueError(f"not a rate limit in limits notation ({value!r})") from exc
    if not items:
        raise ValueError("empty rate limit")


def format_settings_error(exc: ValidationError) -> str:
    """One line naming the variable and what is wrong with it."""
    problems = []
    for err in exc.errors():
        loc = "_".join(str(part) for part in err["loc"]).upper()
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"{loc}: {message}" if loc else message)
    return "configuration error: " + "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the environment once; a malformed value stops the process with one line."""
    try:
        return Settings()
    except ValidationError as exc:
        print(format_settings_error(exc), file=sys.stderr)
        raise SystemExit(2) from None
