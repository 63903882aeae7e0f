"""The benchmark's baseline: the least a service can do to answer `GET /v1/projects/{id}`.

FastAPI + one asyncpg pool, the same single-row SELECT from one tenant schema, plain JSON.
No auth, no tenant pinning, no rate limit, no cache, no metrics, no logging: the ratio of
Tessera's numbers to these is the price of everything Tessera adds.

Run: BENCH_DATABASE_URL=postgresql://... BENCH_SCHEMA=tenant_x uvicorn scripts.bench_baseline:app
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

DATABASE_URL = os.environ["BENCH_DATABASE_URL"]
SCHEMA = os.environ["BENCH_SCHEMA"]
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "10"))  # Tessera's default db_pool_size

# The schema name comes from our own bench script (a derived identifier), never from a user.
_QUERY = (
    f'SELECT id, name, description, created_at, updated_at, version FROM "{SCHEMA}".projects '
    "WHERE id = $1"
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(DATABASE_URL, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


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
