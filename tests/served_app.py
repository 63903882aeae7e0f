"""An app factory for tests that serve Tessera with uvicorn (`--factory`): the real app plus a
slow route, so a test can hold requests in flight while the process is told to stop."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from app.main import create_app

SLOW_SECONDS = 1.0


def create_slow_app() -> FastAPI:
    app = create_app()

    @app.get("/_slow", include_in_schema=False)
    async def slow() -> dict[str, str]:
        await asyncio.sleep(SLOW_SECONDS)
        return {"status": "done"}

    return app
