"""What the tenant cache stores and where: entry keys (CacheKey), entries (CachedResponse), and
the Redis keys of a tenant's generation and versions, all under the tenant's prefix
(`tessera:{<slug>}:<id hex>:`, app/services/tenant_keys.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from app.services.tenant_keys import TenantKeys

_NAME = re.compile(r"^[A-Za-z0-9_./-]{1,200}$")


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What is cached: one resource of a collection, or one page of its listing.

    Collections may nest: `projects/<project_id>/tasks` names the tasks of one project.
    """

    collection: str
    resource_id: str | None = None
    query: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.collection):
            raise ValueError(f"collection {self.collection!r} is not a cache name")
        if self.resource_id is not None and not _NAME.fullmatch(self.resource_id):
            raise ValueError(f"resource id {self.resource_id!r} is not a cache name")
        if (self.resource_id is None) == (self.query is None):
            raise ValueError("a cache key names either one resource or one page")

    @classmethod
    def resource(cls, collection: str, resource_id: str) -> CacheKey:
        return cls(collection, resource_id=resource_id)

    @classmethod
    def page(cls, collection: str, query: str = "") -> CacheKey:
        """One page of a listing; `query` is the canonical form of its parameters."""
        return cls(collection, query=query)

    @classmethod
    def pages(cls, collection: str) -> CacheKey:
        """Every page of a collection's listing (for invalidate)."""
        return cls(collection, query="")

    @property
    def is_page(self) -> bool:
        return self.query is not None

    @property
    def versioned(self) -> str:
        """What carries this entry's version: the collection for a page, else the resource."""
        return self.collection if self.is_page else f"{self.collection}:{self.resource_id}"


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A response as it goes on the wire, enough to answer a later GET (or its 304)."""

    body: bytes
    status: int = 200
    media_type: str = "application/json"
    etag: str | None = None

    def encode(self) -> bytes:
        head = {"s": self.status, "t": self.media_type, "e": self.etag}
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedResponse:
        head_raw, _, body = raw.partition(b"\n")
        head = json.loads(head_raw)
        return cls(body=body, status=int(head["s"]), media_type=str(head["t"]), etag=head["e"])


def generation_key(tenant: TenantKeys) -> str:
    return f"{tenant.prefix}gen"


def version_key(tenant: TenantKeys, versioned: str) -> str:
    """The version of a collection's pages (`projects`) or of one resource (`projects:<id>`)."""
    return f"{tenant.prefix}ver:{versioned}"


def lookup_inputs(tenant: TenantKeys, key: CacheKey) -> tuple[str, str, list[str]]:
    """The generation and version keys of a lookup, and its three arguments."""
    if key.is_page:
        what, tail = key.collection, f":{key.query}"
    else:
        what, tail = f"{key.collection}:{key.resource_id}", ""
    return (
        generation_key(tenant),
        version_key(tenant, key.versioned),
        [tenant.prefix, what, tail],
    )
