"""Per-request context variables, bound by the request middleware and read by logs and errors."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
tenant_var: ContextVar[str | None] = ContextVar("tenant", default=None)
# The admitted tenant's Redis key prefix (slug and id: app/services/tenant_keys.py), for what
# the middleware counts per tenant after the response (the usage tally).
tenant_keys_var: ContextVar[str | None] = ContextVar("tenant_keys", default=None)
