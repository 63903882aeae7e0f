"""factory-boy factories for tenants, projects and tasks, with async helpers that insert them.

The factories build plain dicts (request payloads); the helpers send them through the real
path, the service layer for tenants and the HTTP API for projects and tasks, because
factory-boy itself cannot await.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any

import factory
import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.repositories.tenants import TenantRecord
from app.services.provisioning import create_tenant


class TenantFactory(factory.DictFactory):
    slug = factory.LazyFunction(lambda: f"fac-{uuid.uuid4().hex[:10]}")
    name = factory.Faker("company")
    plan = factory.Iterator(["free", "pro", "enterprise"])
    rate_limit = None


class ProjectFactory(factory.DictFactory):
    name = factory.Sequence(lambda n: f"Project {n}")
    description = factory.Faker("paragraph")


class TaskFactory(factory.DictFactory):
    title = factory.Sequence(lambda n: f"Task {n}")
    description = factory.Faker("sentence")
    status = factory.Iterator(["todo", "in_progress", "done"])
    priority = factory.Iterator(["low", "medium", "high"])
    assignee = factory.Iterator(["alice", "bob", None])
    labels = factory.Iterator([["backend"], ["frontend", "urgent"], []])
    due_date = factory.Sequence(lambda n: (date(2030, 1, 1) + timedelta(days=n)).isoformat())


async def make_tenant(engine: AsyncEngine, settings: Settings, **overrides: Any) -> TenantRecord:
    values = TenantFactory(**overrides)
    return await create_tenant(engine, settings, **values)


async def post_project(
    client: httpx.AsyncClient, headers: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    response = await client.post("/v1/projects", json=ProjectFactory(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def post_task(
    client: httpx.AsyncClient, headers: dict[str, str], project_id: str, **overrides: Any
) -> dict[str, Any]:
    response = await client.post(
        f"/v1/projects/{project_id}/tasks", json=TaskFactory(**overrides), headers=headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
