"""TenantSlots: each tenant's share of the pool on one replica, its bounded wait, its order."""

from __future__ import annotations

import asyncio

import pytest

from app.core.config import Settings
from app.core.errors import TenantBusy
from app.db.fair_share import TenantShare, TenantSlots
from app.db.tenancy import TenantSchema, begin_pinned_sql

A = TenantShare("tenant-a", 2, None)
B = TenantShare("tenant-b", 2, None)


async def test_a_tenant_past_its_share_waits_then_gets_tenant_busy_with_retry_after() -> None:
    refused: list[str] = []
    slots = TenantSlots(wait_seconds=0.05, on_rejection=refused.append)
    await slots.take(A)
    await slots.take(A)
    with pytest.raises(TenantBusy) as caught:
        await slots.take(A)
    assert caught.value.status == 429 and caught.value.code == "tenant_busy"
    assert caught.value.headers["Retry-After"] == "1"
    assert refused == ["tenant-a"]
    await slots.take(B)  # another tenant's share is its own
    assert (slots.in_use("tenant-a"), slots.in_use("tenant-b")) == (2, 1)


async def test_a_freed_slot_goes_to_the_oldest_waiter_before_any_newcomer() -> None:
    slots = TenantSlots(wait_seconds=5)
    one = TenantShare("t", 1, None)
    await slots.take(one)
    served: list[int] = []

    async def request(n: int) -> None:
        await slots.take(one)
        served.append(n)
        await asyncio.sleep(0)
        slots.give_back(one)

    waiters = [asyncio.create_task(request(n)) for n in range(3)]
    await asyncio.sleep(0)  # all three queued
    slots.give_back(one)
    newcomer = asyncio.create_task(request(99))
    await asyncio.gather(*waiters, newcomer)
    assert served == [0, 1, 2, 99]
    assert slots.in_use("t") == 0


async def test_slots_and_queues_leave_no_entry_behind_when_idle() -> None:
    slots = TenantSlots(wait_seconds=0.01)
    one = TenantShare("t", 1, None)
    await slots.take(one)
    with pytest.raises(TenantBusy):
        await slots.take(one)
    slots.give_back(one)
    assert slots._busy == {} and slots._waiting == {}  # noqa: SLF001


async def test_a_cancelled_waiter_gives_up_its_place_and_any_slot_it_was_handed() -> None:
    slots = TenantSlots(wait_seconds=5)
    one = TenantShare("t", 1, None)
    await slots.take(one)
    waiter = asyncio.create_task(slots.take(one))
    await asyncio.sleep(0)
    slots.give_back(one)  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.in_use("t") == 0
    await asyncio.wait_for(slots.take(one), 1)  # the slot is free again


async def test_no_cap_takes_no_slot() -> None:
    slots = TenantSlots(wait_seconds=0.01)
    free = TenantShare("t", None, None)
    for _ in range(100):
        await slots.take(free)
    assert slots.in_use("t") == 0


def test_fair_share_off_builds_no_slots() -> None:
    assert TenantSlots.for_settings(Settings(environment="test", fair_share_enabled=False)) is None
    slots = TenantSlots.for_settings(Settings(environment="test", tenant_busy_wait_seconds=0.25))
    assert slots is not None and slots.wait_seconds == 0.25


def test_the_statement_timeout_travels_in_the_pin_round_trip() -> None:
    location = TenantSchema(schema="tenant_acme", role="tenant_acme")
    sql = begin_pinned_sql(location, statement_timeout_ms=3000)
    assert sql.startswith("BEGIN; SELECT set_config('search_path'")
    assert sql.endswith(", set_config('statement_timeout', '3000', true)")
    assert sql.count(";") == 1  # BEGIN, then one SELECT: one round trip
    assert "statement_timeout" not in begin_pinned_sql(location)
