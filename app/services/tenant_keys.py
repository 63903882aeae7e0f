"""Where a tenant's Redis keys live: the one place that builds their prefix.

Every tenant-scoped key (cache entries, versions, the generation, rate-limit windows) starts
with `tessera:{<slug>}:<tenant id hex>:`. The braces are the Redis Cluster hash tag, so all of
a tenant's keys share one slot; the id is what keeps a tenant apart from an earlier tenant
that had the same slug (deleted, then the slug given again): their keys never meet, whatever
Redis heard or missed when the slug changed hands (docs/decisions/0022-tenant-identity-in-keys.md).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """A tenant's identity as Redis sees it: its slug (hash tag, metric labels) and its
    immutable id, with the prefix built once (the registry keeps one per tenant)."""

    slug: str
    id: uuid.UUID
    prefix: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", f"tessera:{{{self.slug}}}:{self.id.hex}:")
