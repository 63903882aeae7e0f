"""The rules every versioned resource shares (app/services/versioned.py), through the project
and task services on a real tenant transaction, without HTTP."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from app.db.executor import Executor
from app.db.pool import TenantConnections
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema
from app.schemas.projects import ProjectCreate, ProjectUpdate
from app.schemas.tasks import TaskCreate, TaskUpdate
from app.services import projects, tasks
from app.services.versioned import VersionMismatch


def loc(tenant: TenantRecord) -> TenantSchema:
    return TenantSchema(schema=tenant.schema, role=tenant.db_role)


async def events(conn: Executor) -> list[str]:
    rows = (await conn.execute(text("SELECT action FROM audit_events ORDER BY at, id"))).all()
    return [row[0] for row in rows]


async def test_a_change_writes_one_event_and_a_new_version(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    async with connections.transaction(loc(tenant)) as conn:
        made = await projects.create_project(conn, ProjectCreate(name="a"), actor="ann")
        changed = await projects.update_project(
            conn, made.id, ProjectUpdate(name="b"), actor="ann", versions={made.version}
        )
        assert (changed.name, changed.version) == ("b", made.version + 1)
        assert await events(conn) == ["project.created", "project.updated"]


async def test_an_empty_change_is_no_new_version_and_no_event_but_if_match_still_holds(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    async with connections.transaction(loc(tenant)) as conn:
        made = await projects.create_project(conn, ProjectCreate(name="a"), actor="ann")
        same = await projects.update_project(
            conn, made.id, ProjectUpdate(), actor="ann", versions={made.version}
        )
        assert same == made
        with pytest.raises(VersionMismatch):
            await projects.update_project(
                conn, made.id, ProjectUpdate(), actor="ann", versions={made.version + 1}
            )
        assert await events(conn) == ["project.created"]


async def test_a_stale_version_is_412_and_a_missing_id_is_404_for_update_and_delete(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    async with connections.transaction(loc(tenant)) as conn:
        made = await projects.create_project(conn, ProjectCreate(name="a"), actor="ann")
        with pytest.raises(VersionMismatch):
            await projects.update_project(
                conn, made.id, ProjectUpdate(name="b"), actor="ann", versions={99}
            )
        with pytest.raises(VersionMismatch):
            await projects.delete_project(conn, made.id, actor="ann", versions={99})
        with pytest.raises(projects.ProjectNotFound):
            await projects.delete_project(conn, uuid.uuid4(), actor="ann", versions=None)
        with pytest.raises(tasks.TaskNotFound):
            await tasks.update_task(
                conn, uuid.uuid4(), TaskUpdate(title="x"), actor="ann", versions=None
            )
        assert (await projects.get_project(conn, made.id)).name == "a"  # nothing changed
        assert await events(conn) == ["project.created"]


async def test_deleting_a_task_answers_its_project_and_records_the_event(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    async with connections.transaction(loc(tenant)) as conn:
        project = await projects.create_project(conn, ProjectCreate(name="a"), actor="ann")
        task = await tasks.create_task(conn, project.id, TaskCreate(title="t"), actor="bob")
        assert await tasks.delete_task(conn, task.id, actor="bob", versions={1}) == project.id
        with pytest.raises(tasks.TaskNotFound):
            await tasks.get_task(conn, task.id)
        assert await events(conn) == ["project.created", "task.created", "task.deleted"]


async def test_a_task_needs_its_project(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    async with connections.transaction(loc(tenant)) as conn:
        with pytest.raises(projects.ProjectNotFound):
            await tasks.create_task(conn, uuid.uuid4(), TaskCreate(title="t"), actor="bob")


async def test_a_failed_transaction_leaves_neither_the_row_nor_its_event(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    with pytest.raises(RuntimeError):
        async with connections.transaction(loc(tenant)) as conn:
            await projects.create_project(conn, ProjectCreate(name="gone"), actor="ann")
            raise RuntimeError("the request failed after the write")
    async with connections.transaction(loc(tenant)) as conn:
        assert await conn.scalar(text("SELECT count(*) FROM projects")) == 0
        assert await events(conn) == []


async def test_a_write_whose_audit_event_fails_leaves_neither_the_row_nor_the_event(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    """The event is written by the change's own statement: when the event cannot be
    written (here: an event id already taken), the change is not made either."""
    from app.db.repositories import projects as repo
    from app.services import audit

    async with connections.transaction(loc(tenant)) as conn:
        made = await projects.create_project(conn, ProjectCreate(name="a"), actor="ann")
        taken = (await conn.execute(text("SELECT id FROM audit_events"))).one()[0]
    clash = audit.entry(actor="ann", action="project.created", at=made.created_at)
    clash = type(clash)(taken, clash.at, clash.actor, clash.action, clash.request_id)
    with pytest.raises(Exception, match="audit_events"):
        async with connections.transaction(loc(tenant)) as conn:
            await repo.insert_project(
                conn, id=uuid.uuid4(), name="b", description=None, at=made.created_at, event=clash
            )
    async with connections.transaction(loc(tenant)) as conn:
        assert await conn.scalar(text("SELECT count(*) FROM projects")) == 1
        assert await events(conn) == ["project.created"]


async def test_a_task_and_its_event_are_written_together_or_not_at_all(
    connections: TenantConnections, tenant: TenantRecord
) -> None:
    async with connections.transaction(loc(tenant)) as conn:
        project = await projects.create_project(conn, ProjectCreate(name="a"), actor="ann")
    with pytest.raises(Exception, match="status"):  # the table's CHECK refuses the row
        async with connections.transaction(loc(tenant)) as conn:
            await tasks.create_task(
                conn, project.id, TaskCreate.model_construct(title="t", status="nope"), actor="b"
            )
    async with connections.transaction(loc(tenant)) as conn:
        assert await conn.scalar(text("SELECT count(*) FROM tasks")) == 0
        assert await events(conn) == ["project.created"]
