"""Each tenant's fair share of the shared pool on one replica: at most its plan's number of
transactions at once, the rest waiting a bounded time in their own tenant's queue
(docs/decisions/0026-fair-share-of-the-pool.md). TenantConnections.transaction takes a slot
before it takes a pooled connection, so a tenant past its share waits here, never in the
pool's queue in front of every other tenant's requests.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from app.core.config import Settings
from app.core.errors import TenantBusy

OnBusy = Callable[[str], None]  # hears the slug of each tenant refused 429 tenant_busy


@dataclass(frozen=True, slots=True)
class TenantShare:
    """What a tenant's plan allows it of the database: `tenant` (its slug) keys its slots
    and names it in the rejection metric; None lifts the cap, or the statement timeout."""

    tenant: str
    max_concurrent_transactions: int | None
    statement_timeout_ms: int | None


class TenantSlots:
    """Per-tenant counters of transactions in progress, and a FIFO of waiters per tenant.

    Taking a free slot is a dict lookup and a comparison. A slot that ends while others of
    its tenant wait is handed to the oldest of them directly, so a newcomer can never pass a
    waiter, and a waiter is served or refused within `wait_seconds`: after between half of
    it and all of it, at random, so that a flood's waiters, queued together, are not all
    refused together and back together (measured: bursts of 429s that delayed the other
    tenants' requests). Only tenants with a transaction in progress or waiting have entries:
    memory follows the traffic, not the number of tenants.
    """

    def __init__(self, *, wait_seconds: float, on_rejection: OnBusy | None = None) -> None:
        self.wait_seconds = wait_seconds
        self._on_rejection = on_rejection
        self._busy: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    @classmethod
    def for_settings(
        cls, settings: Settings, *, on_rejection: OnBusy | None = None
    ) -> TenantSlots | None:
        """The replica's slots, or None when FAIR_SHARE_ENABLED=false (no cap at all)."""
        if not settings.fair_share_enabled:
            return None
        return cls(wait_seconds=settings.tenant_busy_wait_seconds, on_rejection=on_rejection)

    def in_use(self, tenant: str) -> int:
        """Slots of `tenant` taken right now (for tests and the benchmark)."""
        return self._busy.get(tenant, 0)

    async def take(self, share: TenantShare) -> None:
        """A slot of `share.tenant`; waits at most `wait_seconds` for one, then raises
        TenantBusy (429). Give it back with `give_back`."""
        limit = share.max_concurrent_transactions
        if limit is None:
            return
        tenant = share.tenant
        busy = self._busy.get(tenant, 0)
        if busy < limit and tenant not in self._waiting:
            self._busy[tenant] = busy + 1
            return
        await self._wait(tenant, limit)

    def give_back(self, share: TenantShare) -> None:
        limit = share.max_concurrent_transactions
        if limit is None:
            return
        tenant = share.tenant
        busy = self._busy[tenant]
        waiters = self._waiting.get(tenant)
        # The slot passes to the oldest waiter unless the tenant is over its (lowered) limit.
        while waiters and busy <= limit:
            waiter = waiters.popleft()
            if not waiters:
                del self._waiting[tenant]
            if not waiter.done():
                waiter.set_result(None)
                return
        if busy > 1:
            self._busy[tenant] = busy - 1
        else:
            del self._busy[tenant]

    async def _wait(self, tenant: str, limit: int) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(tenant, deque()).append(waiter)
        # A timer that fails the waiter unless a slot came first (give_back skips a waiter
        # that is done): one timer handle, where asyncio.timeout cost a context manager,
        # a reschedule and a cancellation of the task on every wait.
        wait = self.wait_seconds * random.uniform(0.5, 1.0)  # noqa: S311
        timer = loop.call_later(wait, _run_out, waiter)
        try:
            await waiter
        except TimeoutError:
            self._forget(tenant, waiter)
            if self._on_rejection is not None:
                self._on_rejection(tenant)
            raise TenantBusy(
                f"This tenant already runs {limit} database transactions at once on this "
                "server, its plan's share; retry shortly."
            ) from None
        except BaseException:  # the request itself was cancelled
            if waiter.done() and not waiter.cancelled():  # handed a slot: pass it on
                self.give_back(TenantShare(tenant, limit, None))
            else:
                self._forget(tenant, waiter)
            raise
        finally:
            timer.cancel()

    def _forget(self, tenant: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(tenant)
        if waiters is None:
            return
        try:
            waiters.remove(waiter)
        except ValueError:
            pass
        if not waiters:
            del self._waiting[tenant]


def _run_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
