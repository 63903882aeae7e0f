"""Property: no request body or query the tenant API can be sent makes it answer 5xx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import post_project, post_task

Headers = dict[str, str]
T = TypeVar("T")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=60)
    | st.sampled_from(["todo", "done", "high", "2025-02-30", "2030-01-01", "\x00", ""])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=25) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=30,
)
FIELDS = ["name", "description", "title", "status", "priority", "assignee", "labels", "due_date"]
bodies = (
    st.dictionaries(st.sampled_from([*FIELDS, "id", "version", "zzz"]), json_values, max_size=6)
    | json_values
)
queries = st.dictionaries(
    st.sampled_from(["status", "assignee", "label", "limit", "cursor", "other"]),
    st.text(max_size=40) | st.integers().map(str),
    max_size=5,
)


async def test_no_body_or_query_makes_the_tenant_api_fail_with_5xx(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    loop = asyncio.get_running_loop()
    project = await post_project(client, headers)
    task = await post_task(client, headers, project["id"])

    def run(coro: Coroutine[Any, Any, T]) -> T:
        # Hypothesis drives a synchronous test in a worker thread; the requests themselves run
        # on the test's event loop, where the app, its pool and its connections live.
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    targets = [
        ("POST", "/v1/projects"),
        ("PATCH", f"/v1/projects/{project['id']}"),
        ("POST", f"/v1/projects/{project['id']}/tasks"),
        ("PATCH", f"/v1/tasks/{task['id']}"),
    ]

    @settings(
        max_examples=80,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(target=st.sampled_from(targets), body=bodies, query=queries)
    def no_5xx(target: tuple[str, str], body: Any, query: dict[str, str]) -> None:
        method, url = target
        sent = run(
            client.request(
                method,
                url,
                content=json.dumps(body).encode(),
                headers={**headers, "Content-Type": "application/json"},
            )
        )
        assert sent.status_code < 500, (method, url, body, sent.text)
        listed = run(
            client.get(f"/v1/projects/{project['id']}/tasks", params=query, headers=headers)
        )
        assert listed.status_code < 500, (query, listed.text)
        pages = run(client.get("/v1/projects", params=query, headers=headers))
        assert pages.status_code < 500, (query, pages.text)

    await asyncio.to_thread(no_5xx)
