"""OpenAPI descriptions of the problem+json answers, so every route documents its errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_DESCRIPTIONS = {
    304: "Not modified (If-None-Match matched the current ETag)",
    400: "Bad request (malformed JSON or header)",
    401: "No token, or an invalid one (`not_authenticated`, `invalid_token`, "
    "`token_predates_tenant`: on the tenant API, issued before its tenant was created)",
    403: "Token valid but not allowed (`insufficient_scope`, `tenant_not_found`, "
    "`tenant_suspended`, `tenant_deleted`)",
    404: "Not found",
    409: "Conflict",
    412: "If-Match does not match the current ETag (`precondition_failed`)",
    413: "Request body over 1 MiB (`payload_too_large`)",
    422: "Validation error (`validation_error`, with `errors`)",
    429: "Rate limit exceeded (`rate_limited`), or the tenant already runs its plan's number "
    "of database transactions at once (`tenant_busy`); both with Retry-After",
    503: "A dependency is unavailable (`database_unavailable`, `auth_unavailable`, "
    "`rate_limiter_unavailable`), or a statement ran past the tenant's statement timeout "
    "(`statement_timeout`, with Retry-After)",
}


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details, as every error of this API is sent."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None
    errors: list[ValidationErrorItem] | None = None


class QuotaProblem(Problem):
    """A 403: with `code` `quota_exceeded`, the quota of the tenant's plan that the create
    would pass, its limit and the current usage."""

    quota: str | None = None
    limit: int | None = None
    usage: int | None = None


# What a create answers 403 with: those of every tenant call, and a quota of its plan.
CREATE_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {
        "description": "Token valid but not allowed (`insufficient_scope`, `tenant_not_found`, "
        "`tenant_suspended`), or the create would pass a quota of the tenant's plan "
        "(`quota_exceeded`, with `quota`, `limit` and `usage`)",
        "model": QuotaProblem,
        "content": {"application/problem+json": {}},
    }
}

ADMIN_ERRORS = (400, 401, 403, 413, 422, 503)
TENANT_ERRORS = (400, 401, 403, 413, 422, 429, 503)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": _DESCRIPTIONS.get(status, "Error")}
        if status != 304:
            entry["model"] = Problem
            entry["content"] = {"application/problem+json": {}}
        out[status] = entry
    return out
