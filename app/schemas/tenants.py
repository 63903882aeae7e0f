"""Admin API models for tenants (CONTRACT section 7)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from app.core.config import validate_rate_limit
from app.db.tenancy import SLUG_MAX, SLUG_MIN, slug_problem
from app.schemas.common import RequestModel, SafeStr

Plan = Literal["free", "pro", "enterprise"]
Status = Literal["active", "suspended"]


def _slug(value: str) -> str:
    problem = slug_problem(value)
    if problem:
        raise ValueError(f"slug {problem}")
    return value


def _rate_limit(value: str | None) -> str | None:
    if value is not None:
        validate_rate_limit(value)
    return value


Slug = Annotated[str, Field(min_length=SLUG_MIN, max_length=SLUG_MAX), AfterValidator(_slug)]
RateLimit = Annotated[
    str | None,
    Field(max_length=200, examples=["600/minute", "10/second;1000/hour"]),
    AfterValidator(_rate_limit),
]
TenantName = Annotated[SafeStr, Field(min_length=1, max_length=200)]


class TenantCreate(RequestModel):
    slug: Slug
    name: TenantName
    plan: Plan = "free"
    rate_limit: RateLimit = None


class TenantUpdate(RequestModel):
    """Fields left out stay as they are; `rate_limit: null` returns to RATE_LIMIT_DEFAULT."""

    name: TenantName | None = None
    plan: Plan | None = None
    rate_limit: RateLimit = None


class TenantOut(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    plan: Plan
    status: Status
    rate_limit: str = Field(description="The tenant's own limit, or RATE_LIMIT_DEFAULT")
    schema_: str = Field(alias="schema", serialization_alias="schema")
    schema_version: str | None
    created_at: datetime
    updated_at: datetime

    model_config = {"populate_by_name": True}


class TenantSelf(BaseModel):
    slug: str
    name: str
    plan: Plan
    status: Status
    rate_limit: str


def _node(value: str) -> str:
    port = int(value.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1-65535")
    return value


Node = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252}):[0-9]{1,5}$",
        description="A worker as Citus names it in pg_dist_node: `host:port`",
        examples=["10.0.0.12:5432"],
    ),
    AfterValidator(_node),
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
