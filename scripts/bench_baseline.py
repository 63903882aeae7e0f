"""The benchmark's baseline: the least a service can do to answer Tessera's read and writes.

FastAPI + one asyncpg pool on one tenant schema's own tables, plain JSON: the single-row
SELECT of `GET /v1/projects/{id}`, and the bare writes beside Tessera's (issue 17):
`POST /v1/projects` and `POST /v1/projects/{id}/tasks` (`INSERT ... RETURNING`), the
conditional `PATCH /v1/tasks/{id}` (`UPDATE ... WHERE id = $1 AND version = $n RETURNING`,
the version from If-Match, Tessera's `"<id>-<version>"`, or the body; 412 when no row
matches) and `DELETE /v1/tasks/{id}`. One statement each, in its own implicit transaction.
No auth, no tenant pinning, no rate limit, no cache, no audit event, no idempotency, no
metrics, no logging: the ratio of Tessera's numbers to these is the price of everything
Tessera adds.

Run: BENCH_DATABASE_URL=postgresql://... BENCH_SCHEMA=tenant_x uvicorn scripts.bench_baseline:app
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
from fastapi import FastAPI, Header, HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

DATABASE_URL = os.environ["BENCH_DATABASE_URL"]
SCHEMA = os.environ["BENCH_SCHEMA"]
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "10"))  # Tessera's default db_pool_size

# The schema name comes from our own bench script (a derived identifier), never from a user.
_PROJECT = "id, name, description, created_at, updated_at, version"
_TASK = (
    "id, project_id, title, description, status, priority, assignee, labels, due_date, "
    "created_by, created_at, updated_at, version"
)
_QUERY = f'SELECT {_PROJECT} FROM "{SCHEMA}".projects WHERE id = $1'
_INSERT_PROJECT = (
    f'INSERT INTO "{SCHEMA}".projects (id, name, description) VALUES ($1, $2, $3) '
    f"RETURNING {_PROJECT}"
)
_INSERT_TASK = (
    f'INSERT INTO "{SCHEMA}".tasks (id, project_id, title, description, created_by) '
    f"VALUES ($1, $2, $3, $4, 'bench') RETURNING {_TASK}"
)
_UPDATE_TASK = (
    f'UPDATE "{SCHEMA}".tasks SET title = COALESCE($3, title), '
    "description = COALESCE($4, description), updated_at = now(), version = version + 1 "
    f"WHERE id = $1 AND version = $2 RETURNING {_TASK}"
)
_DELETE_TASK = f'DELETE FROM "{SCHEMA}".tasks WHERE id = $1 RETURNING id'


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)


class TaskIn(BaseModel):
    title: str = Field(min_length=1, max_length=500)
    description: str | None = Field(default=None, max_length=10_000)


class TaskPatch(BaseModel):
    title: str | None = Field(default=None, min_length=1, max_length=500)
    description: str | None = Field(default=None, max_length=10_000)
    version: int | None = None  # when there is no If-Match


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(DATABASE_URL, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


def _json(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, uuid.UUID):
            out[name] = str(value)
        elif hasattr(value, "isoformat"):
            out[name] = value.isoformat()
        else:
            out[name] = value
    return out


def _answer(row: Mapping[str, Any], status: int, location: str | None = None) -> JSONResponse:
    headers = {"ETag": f'"{row["id"]}-{row["version"]}"'}
    if location is not None:
        headers["Location"] = location
    return JSONResponse(_json(row), status_code=status, headers=headers)


@app.get("/v1/projects/{project_id}")
async def get_project(project_id: uuid.UUID) -> JSONResponse:
    row = await app.state.pool.fetchrow(_QUERY, project_id)
    if row is None:
        raise HTTPException(status_code=404)
    return JSONResponse(
        {
            "id": str(row["id"]),
            "name": row["name"],
            "description": row["description"],
            "created_at": row["created_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat(),
            "version": row["version"],
        }
    )


@app.post("/v1/projects")
async def create_project(body: ProjectIn) -> JSONResponse:
    row = await app.state.pool.fetchrow(_INSERT_PROJECT, uuid.uuid4(), body.name, body.description)
    return _answer(row, 201, f"/v1/projects/{row['id']}")


@app.post("/v1/projects/{project_id}/tasks")
async def create_task(project_id: uuid.UUID, body: TaskIn) -> JSONResponse:
    try:
        row = await app.state.pool.fetchrow(
            _INSERT_TASK, uuid.uuid4(), project_id, body.title, body.description
        )
    except asyncpg.ForeignKeyViolationError:
        raise HTTPException(status_code=404) from None
    return _answer(row, 201, f"/v1/tasks/{row['id']}")


def _version(if_match: str | None, task_id: uuid.UUID, body: TaskPatch) -> int:
    if if_match is None:
        if body.version is None:
            raise HTTPException(status_code=428)
        return body.version
    prefix = f'"{task_id}-'
    tag = if_match.strip()
    if not (tag.startswith(prefix) and tag.endswith('"') and tag[len(prefix) : -1].isdigit()):
        raise HTTPException(status_code=412)
    return int(tag[len(prefix) : -1])


@app.patch("/v1/tasks/{task_id}")
async def update_task(
    task_id: uuid.UUID,
    body: TaskPatch,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> JSONResponse:
    version = _version(if_match, task_id, body)
    row = await app.state.pool.fetchrow(
        _UPDATE_TASK, task_id, version, body.title, body.description
    )
    if row is None:
        raise HTTPException(status_code=412)
    return _answer(row, 200)


@app.delete("/v1/tasks/{task_id}", status_code=204)
async def delete_task(task_id: uuid.UUID) -> Response:
    if await app.state.pool.fetchval(_DELETE_TASK, task_id) is None:
        raise HTTPException(status_code=404)
    return Response(status_code=204)
