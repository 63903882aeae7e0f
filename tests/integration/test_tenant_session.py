"""TenantSession: the request path's pinned transaction running compiled Core statements."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.engine import build_engine
from app.db.executor import TenantSession, prebuilt
from app.db.models.tenant import idempotency_keys, projects, tasks
from app.db.pool import TenantConnections
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema, pin_tenant


def loc(record: TenantRecord) -> TenantSchema:
    return TenantSchema(schema=record.schema, role=record.db_role)


@pytest.fixture
async def pool_of(settings: Settings) -> AsyncIterator[Callable[..., TenantConnections]]:
    """Pools of a given size (and overflow), released and disposed afterwards."""
    built: list[TenantConnections] = []

    def build(size: int, overflow: int = 0) -> TenantConnections:
        update = {"db_pool_size": size, "db_max_overflow": overflow}
        built.append(TenantConnections(build_engine(settings.model_copy(update=update))))
        return built[-1]

    yield build
    for connections in built:
        await connections.aclose()
        await connections.engine.dispose()


@pytest.fixture
def one_connection(pool_of: Callable[..., TenantConnections]) -> TenantConnections:
    return pool_of(1)


@pytest.fixture
def room_to_park(pool_of: Callable[..., TenantConnections]) -> TenantConnections:
    """One pooled connection and room for one more: a read may park the first (a pool with
    no room left never parks, see test_a_read_never_parks_while_the_pool_is_exhausted)."""
    return pool_of(1, 1)


async def test_round_trips_every_column_type(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    project_id, task_id = uuid.uuid4(), uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    async with connections.transaction(loc(tenant)) as session:
        await session.execute(
            insert(projects).values(id=project_id, name="p\u00e9", created_at=now)
        )
        row = (
            await session.execute(
                insert(tasks)
                .values(
                    id=task_id,
                    project_id=project_id,
                    title="t",
                    labels=["a", "b"],
                    due_date=dt.date(2030, 2, 28),
                    created_by="me",
                    assignee=None,
                )
                .returning(tasks)
            )
        ).one()
        assert row.labels == ["a", "b"] and row.due_date == dt.date(2030, 2, 28)
        assert row._mapping["assignee"] is None and row.id == task_id
        await session.execute(
            pg_insert(idempotency_keys).values(
                key="k",
                request_hash="h",
                state="done",
                response_status=201,
                response_headers={"Location": "/x"},
                response_body=b"\x00\x01",
                expires_at=now + dt.timedelta(days=1),
            )
        )
        stored = (
            await session.execute(
                select(idempotency_keys.c.response_headers, idempotency_keys.c.response_body)
            )
        ).one()
        assert stored.response_headers == {"Location": "/x"}
        assert stored.response_body == b"\x00\x01"
        fetched = (await session.execute(select(projects).where(projects.c.id == project_id))).one()
        assert fetched.name == "p\u00e9" and fetched.created_at == now


async def test_same_statement_shape_reuses_the_compiled_form_with_new_values(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    async with connections.transaction(loc(tenant)) as session:
        for i, project_id in enumerate(ids):
            await session.execute(insert(projects).values(id=project_id, name=f"n{i}"))
        for i, project_id in enumerate(ids):
            name = await session.scalar(select(projects.c.name).where(projects.c.id == project_id))
            assert name == f"n{i}"
        # IN lists change the SQL with their length: each length still answers correctly.
        for size in (1, 2, 3):
            found = (
                await session.execute(select(projects.c.id).where(projects.c.id.in_(ids[:size])))
            ).scalars()
            assert set(found) == set(ids[:size])
        bumped = (
            await session.execute(
                update(projects)
                .where(projects.c.id == ids[0], projects.c.version.in_([1, 5]))
                .values(version=projects.c.version + 1)
                .returning(projects.c.version)
            )
        ).scalar()
        assert bumped == 2
        assert await session.scalar(text("SELECT CAST(:x AS int) + 1"), {"x": 41}) == 42
        assert await session.scalar(select(func.count()).select_from(projects)) == 3
        assert (
            await session.scalar(
                select(projects.c.name).where(projects.c.name == bindparam("n")), {"n": "n2"}
            )
            == "n2"
        )


async def test_session_is_pinned_and_the_pin_ends_with_it(
    one_connection: TenantConnections, tenant: TenantRecord
) -> None:
    async with one_connection.transaction(loc(tenant)) as session:
        who = (await session.execute(text("SELECT current_user, current_schema()"))).one()
        assert tuple(who) == (tenant.db_role, tenant.schema)
    async with one_connection.engine.connect() as conn:  # the same pooled connection
        row = (
            await conn.execute(text("SELECT current_user, current_setting('search_path')"))
        ).one()
        assert row[0] != tenant.db_role and tenant.schema not in row[1]


async def test_an_error_rolls_everything_back(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    project_id = uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with connections.transaction(loc(tenant)) as session:
            await session.execute(insert(projects).values(id=project_id, name="gone"))
            raise RuntimeError("boom")
    async with connections.transaction(loc(tenant)) as session:
        assert (
            await session.scalar(select(projects.c.id).where(projects.c.id == project_id)) is None
        )


async def test_cancelled_request_never_leaks_its_transaction_or_pin(
    one_connection: TenantConnections, tenant: TenantRecord
) -> None:

    async def slow() -> None:
        async with one_connection.transaction(loc(tenant)) as session:
            await session.execute(text("SELECT pg_sleep(5)"))

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with one_connection.engine.connect() as conn:
        row = (await conn.execute(text("SELECT current_user, now() = statement_timestamp()"))).one()
        assert row[0] != tenant.db_role


async def test_prebuilt_statements_answer_with_each_calls_values(
    connections: TenantConnections, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    by_id = prebuilt(select(projects.c.name).where(projects.c.id == bindparam("project_id")))
    ids = [uuid.uuid4() for _ in range(3)]
    async with connections.transaction(loc(tenant)) as session:
        for i, project_id in enumerate(ids):
            await session.execute(insert(projects).values(id=project_id, name=f"n{i}"))
        for i, project_id in enumerate(ids):  # compiled once, then found by identity
            assert await session.scalar(by_id, {"project_id": project_id}) == f"n{i}"
        assert await session.scalar(by_id, {"project_id": uuid.uuid4()}) is None
        with pytest.raises(Exception, match="project_id"):  # a value is always required
            await session.scalar(by_id, {})
        in_list = prebuilt(select(projects.c.id).where(projects.c.id.in_(ids)))
        with pytest.raises(ValueError, match="IN list"):
            await session.execute(in_list)
    # The same statement through SQLAlchemy (the Executor the CLI and the tests use).
    async with engine.begin() as conn:
        await pin_tenant(conn, loc(tenant))
        assert (await conn.scalar(by_id, {"project_id": ids[1]})) == "n1"


async def test_connections_go_back_to_the_pool_and_overflow_ones_are_closed(
    pool_of: Callable[..., TenantConnections], tenant: TenantRecord
) -> None:
    connections = pool_of(1, overflow=2)
    pool = connections.engine.sync_engine.pool
    backends = set()
    for _ in range(3):  # one after another: the one pooled connection, every time
        async with connections.transaction(loc(tenant)) as session:
            backends.add(await session.scalar(text("SELECT pg_backend_pid()")))
    assert len(backends) == 1 and pool.checkedout() == 1  # parked, clean, for the next one
    await connections.aclose()  # back to the pool
    assert pool.checkedout() == 0

    started = asyncio.Event()

    async def held() -> int:
        async with connections.transaction(loc(tenant)) as session:
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
            await started.wait()
            return int(pid)

    waiting = [asyncio.create_task(held()) for _ in range(3)]
    await asyncio.sleep(0.5)
    assert pool.checkedout() == 3  # two of them overflow
    started.set()
    assert len(set(await asyncio.gather(*waiting))) == 3
    await connections.aclose()  # the one parked (at most half the pool, at least one)
    # The two overflow connections were closed on their way back; one stays pooled.
    assert pool.checkedout() == 0 and pool.overflow() == 0  # none beyond pool_size
    assert pool.checkedin() == 1
    async with connections.transaction(loc(tenant)) as session:
        assert await session.scalar(text("SELECT 1")) == 1


async def backend(session: TenantSession) -> tuple[int, str, bool]:
    row = (
        await session.execute(
            text("SELECT pg_backend_pid(), current_user, current_setting('transaction_read_only')")
        )
    ).one()
    return int(row[0]), str(row[1]), row[2] == "on"


async def test_a_read_only_transaction_parks_and_the_next_begin_carries_its_commit(
    room_to_park: TenantConnections, tenant: TenantRecord, other_tenant: TenantRecord
) -> None:
    pool = room_to_park.engine.sync_engine.pool
    async with room_to_park.transaction(loc(tenant), read_only=True) as session:
        first_pid, who, read_only = await backend(session)
        assert (who, read_only) == (tenant.db_role, True)
        with pytest.raises(Exception, match="read-only transaction"):
            await session.execute(insert(projects).values(id=uuid.uuid4(), name="no"))
    async with room_to_park.transaction(loc(tenant), read_only=True) as session:
        first_xid = await session.scalar(text("SELECT txid_current()"))
    assert pool.checkedout() == 1  # parked, its transaction still open, not in the pool
    # The next transaction, another tenant's write, takes the parked connection: the old
    # transaction is committed in its BEGIN's round trip and the new pin is in force.
    async with room_to_park.transaction(loc(other_tenant)) as session:
        pid, who, read_only = await backend(session)
        assert (pid, who, read_only) == (first_pid, other_tenant.db_role, False)
        assert await session.scalar(text("SELECT txid_current()")) != first_xid
        await session.execute(insert(projects).values(id=uuid.uuid4(), name="yes"))
    # A write commits at once; its connection is parked too, idle and clean: the next
    # transaction takes it without a checkout, and after park_seconds the pool has it back.
    assert pool.checkedout() == 1
    await asyncio.sleep(room_to_park.park_seconds + 0.2)
    assert pool.checkedout() == 0
    async with room_to_park.engine.connect() as conn:  # nothing of the write's pin is left
        row = (await conn.execute(text("SELECT pg_backend_pid(), current_user"))).one()
        assert row[0] == first_pid and row[1] != other_tenant.db_role

    async with room_to_park.transaction(loc(tenant), read_only=True) as session:
        await session.execute(select(projects.c.id))
    assert pool.checkedout() == 1
    await asyncio.sleep(room_to_park.park_seconds + 0.2)  # not taken: committed and returned
    assert pool.checkedout() == 0
    async with room_to_park.engine.connect() as conn:  # the pool's own users see a clean one
        row = (await conn.execute(text("SELECT pg_backend_pid(), current_user"))).one()
        assert row[0] == first_pid and row[1] != tenant.db_role


async def test_a_parked_read_never_holds_up_ddl_on_its_tables(
    room_to_park: TenantConnections, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    async with room_to_park.transaction(loc(tenant), read_only=True) as session:
        await session.execute(select(projects.c.id))  # ACCESS SHARE on projects, held
    started = time.monotonic()
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        await conn.execute(text(f'ALTER TABLE "{tenant.schema}".projects ADD COLUMN x int'))
    assert time.monotonic() - started < 2  # waited for the parked COMMIT, not forever


async def test_a_read_never_parks_while_the_pool_is_exhausted(
    one_connection: TenantConnections, tenant: TenantRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request queued on the pool gets the connection a read has finished with at once:
    parked, it would wait until a newer request took it or the park timer ran out."""
    one_connection.park_seconds = 60.0  # parked means stuck here
    pool = one_connection.engine.sync_engine.pool
    reading, release = asyncio.Event(), asyncio.Event()

    async def read() -> None:
        async with one_connection.transaction(loc(tenant), read_only=True) as session:
            await session.execute(select(projects.c.id))
            reading.set()
            await release.wait()

    async def write() -> None:
        async with one_connection.transaction(loc(tenant)) as session:
            await session.execute(insert(projects).values(id=uuid.uuid4(), name="queued"))

    reader = asyncio.create_task(read())
    await reading.wait()
    writer = asyncio.create_task(write())  # queued on the pool: its one connection is out
    await asyncio.sleep(0.1)
    assert not writer.done()
    release.set()
    await reader
    await asyncio.wait_for(writer, timeout=2)  # well inside DB_POOL_TIMEOUT_SECONDS (3)
    assert pool.checkedout() == 0


async def test_at_most_half_the_pool_is_parked_and_shutdown_returns_them(
    pool_of: Callable[..., TenantConnections], tenant: TenantRecord
) -> None:
    connections = pool_of(4, 4)  # room left: a pool with none never parks
    pool = connections.engine.sync_engine.pool
    release = asyncio.Event()

    async def read() -> None:
        async with connections.transaction(loc(tenant), read_only=True) as session:
            await session.execute(select(projects.c.id))
            await release.wait()

    readers = [asyncio.create_task(read()) for _ in range(4)]
    await asyncio.sleep(0.3)
    release.set()
    await asyncio.gather(*readers)
    assert pool.checkedout() == 2  # two parked, two back in the pool
    await connections.aclose()
    assert pool.checkedout() == 0 and pool.checkedin() == 4
    async with connections.engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() is not None


async def test_a_connection_is_retired_once_it_has_served_too_many_schemas(
    room_to_park: TenantConnections, tenant: TenantRecord, other_tenant: TenantRecord
) -> None:
    room_to_park.max_schemas = 1
    pool = room_to_park.engine.sync_engine.pool
    pids = []
    for who, read_only in ((tenant, False), (tenant, True), (other_tenant, True)):
        async with room_to_park.transaction(loc(who), read_only=read_only) as session:
            pids.append(await session.scalar(text("SELECT pg_backend_pid()")))
    # The second schema retired the connection after its transaction, instead of parking it.
    assert pids[0] == pids[1] == pids[2] and pool.checkedout() == 0
    async with room_to_park.transaction(loc(other_tenant)) as session:
        assert await session.scalar(text("SELECT pg_backend_pid()")) != pids[0]
        assert await session.scalar(text("SELECT current_user")) == other_tenant.db_role
    # The new backend starts its own count: one schema, so it stays.
    async with room_to_park.transaction(loc(other_tenant)) as session:
        last = await session.scalar(text("SELECT pg_backend_pid()"))
    async with room_to_park.transaction(loc(other_tenant)) as session:
        assert await session.scalar(text("SELECT pg_backend_pid()")) == last
