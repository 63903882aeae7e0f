"""Admin API models for tenants (CONTRACT section 7)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from app.core.config import validate_rate_limit
from app.core.slugs import RESERVED_SLUGS, SLUG_MAX, SLUG_MIN, SLUG_PATTERN, slug_problem
from app.schemas.common import Omittable, PatchModel, RequestModel, SafeStr

PLAN_NAME_MIN, PLAN_NAME_MAX = 2, 40
# A plan's name: the slug pattern; any existing plan (`free`, `pro`, `enterprise` from the
# start; GET /admin/v1/plans lists them), else 422 `unknown_plan`.
PlanName = Annotated[
    str,
    Field(
        min_length=PLAN_NAME_MIN,
        max_length=PLAN_NAME_MAX,
        pattern=SLUG_PATTERN,
        examples=["free", "pro", "enterprise"],
    ),
]
Status = Literal["active", "suspended", "deleted"]


def _slug(value: str) -> str:
    problem = slug_problem(value)
    if problem:
        raise ValueError(f"slug {problem}")
    return value


def _rate_limit(value: str | None) -> str | None:
    if value is not None:
        validate_rate_limit(value)
    return value


# What slug_problem (app/db/tenancy.py) accepts, as JSON Schema: the pattern and lengths, and
# neither a reserved name nor one starting with "pg".
SLUG_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": SLUG_MIN,
    "maxLength": SLUG_MAX,
    "pattern": SLUG_PATTERN,
    "not": {"anyOf": [{"enum": sorted(RESERVED_SLUGS)}, {"pattern": "^pg"}]},
}


def _slug_schema(schema: dict[str, Any]) -> None:
    schema.update(SLUG_SCHEMA)


Slug = Annotated[str, AfterValidator(_slug), Field(json_schema_extra=_slug_schema)]

# A tenant's own limit: `limits` notation, in the form documented here (a count from 1, an
# optional multiple, a unit; up to ten joined by ";"), which `limits` always parses.
_RATE_LIMIT_ITEM = r"[1-9][0-9]{0,8}/([1-9][0-9]{0,2} ?)?(second|minute|hour|day|month|year)s?"
RATE_LIMIT_PATTERN = rf"^{_RATE_LIMIT_ITEM}(;{_RATE_LIMIT_ITEM}){{0,9}}$"
RateLimit = Annotated[
    str | None,
    Field(
        max_length=200,
        pattern=RATE_LIMIT_PATTERN,
        examples=["600/minute", "10/second;1000/hour"],
        description="null: the plan's limit, else RATE_LIMIT_DEFAULT",
    ),
    AfterValidator(_rate_limit),
]
TenantName = Annotated[SafeStr, Field(min_length=1, max_length=200)]


class TenantCreate(RequestModel):
    slug: Slug
    name: TenantName
    plan: PlanName = "free"
    rate_limit: RateLimit = None


class TenantUpdate(PatchModel):
    """Fields left out stay as they are; `rate_limit: null` returns to the plan's limit
    (else RATE_LIMIT_DEFAULT)."""

    name: Omittable[TenantName] = None
    plan: Omittable[PlanName] = None
    rate_limit: RateLimit = None


class TenantOut(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    plan: str
    status: Status
    rate_limit: str = Field(
        description="The tenant's own limit, else its plan's, else RATE_LIMIT_DEFAULT"
    )
    schema_: str = Field(alias="schema", serialization_alias="schema")
    schema_version: str | None
    created_at: datetime
    updated_at: datetime
    purge_after: datetime | None = Field(
        description="While deleted: when `tessera tenants purge` may drop it; else null"
    )

    model_config = {"populate_by_name": True}


class TenantSelf(BaseModel):
    slug: str
    name: str
    plan: str
    status: Status
    rate_limit: str


# A port is 1-65535, in the pattern itself so that the document says all the rule.
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
Node = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252}):" + _PORT + "$",
        description="A worker as Citus names it in pg_dist_node: `host:port`",
        examples=["10.0.0.12:5432"],
    ),
]


class TenantMove(RequestModel):
    node: Node


class TenantPlacementOut(BaseModel):
    slug: str
    schema_: str = Field(alias="schema", serialization_alias="schema")
    node: str = Field(description="The worker that holds the tenant's schema now")
    previous_node: str = Field(
        description="Where it was before (equal to `node` when it was there already)"
    )

    model_config = {"populate_by_name": True}
