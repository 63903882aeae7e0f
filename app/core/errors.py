"""Tessera's error types: raised anywhere, answered as problem+json by app/api/problems.py."""

from __future__ import annotations

from typing import Any


class TesseraError(Exception):
    """A domain error: the single handler turns it into problem+json."""

    status: int = 400
    code: str = "bad_request"
    title: str | None = None

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra or {}


class BadRequest(TesseraError):
    status, code = 400, "bad_request"


class BearerChallenge(TesseraError):
    """An answer of the bearer scheme: it carries the RFC 6750 `WWW-Authenticate` challenge."""

    challenge: str = "Bearer"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("WWW-Authenticate", self.challenge)


class NotAuthenticated(BearerChallenge):
    status, code = 401, "not_authenticated"


class InvalidToken(BearerChallenge):
    status, code = 401, "invalid_token"
    challenge = 'Bearer error="invalid_token"'


class TokenPredatesTenant(InvalidToken):
    """401 `token_predates_tenant`: the token was issued (`iat`) before its tenant was
    created, less AUTH_LEEWAY_SECONDS, so it was meant for an earlier tenant of that slug."""

    code = "token_predates_tenant"


class Forbidden(TesseraError):
    status, code = 403, "forbidden"


class InsufficientScope(BearerChallenge, Forbidden):
    status, code = 403, "insufficient_scope"
    challenge = 'Bearer error="insufficient_scope"'


class TenantNotFoundForToken(Forbidden):
    """403 `tenant_not_found`: the token names no tenant, or one that does not exist (any
    more). Forbidden rather than 404: the caller's credentials, not the URL, are at fault."""

    code = "tenant_not_found"


class NotFound(TesseraError):
    status, code = 404, "not_found"


class Conflict(TesseraError):
    status, code = 409, "conflict"


class PreconditionFailed(TesseraError):
    status, code = 412, "precondition_failed"


class UnprocessableEntity(TesseraError):
    status, code = 422, "validation_error"


class RateLimited(TesseraError):
    status, code = 429, "rate_limited"


class RetryAfter(TesseraError):
    """An answer that tells the client when to try again (`Retry-After`, in seconds)."""

    retry_after_seconds: int = 1

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", str(self.retry_after_seconds))


class TenantBusy(RetryAfter):
    """429 `tenant_busy`: the tenant already has its plan's number of transactions running on
    this replica, and none ended within the bounded wait (docs/decisions/0026)."""

    status, code = 429, "tenant_busy"


class ServiceUnavailable(TesseraError):
    status, code = 503, "service_unavailable"


class StatementTimeout(RetryAfter, ServiceUnavailable):
    """503 `statement_timeout`: PostgreSQL cancelled a statement of the tenant's transaction
    (its plan's statement timeout); nothing of the transaction was committed."""

    code = "statement_timeout"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"


class AuthUnavailable(ServiceUnavailable):
    """The issuer's keys were never fetched, so no token can be judged either way."""

    code = "auth_unavailable"
