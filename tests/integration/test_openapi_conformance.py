"""The OpenAPI document tells the truth: schemathesis, every check, against both planes.

Tessera is served by uvicorn over real HTTP (middleware, fast path and h11's parsing
included), on a database of its own, with a tenant that holds a project and a task and with
METRICS_TOKEN set. Schemathesis draws requests from /openapi.json (the document's examples,
boundary and negative coverage, fuzzing, then chains of calls linked by what the answers
return) and checks every answer against the document with all of its checks: no 5xx,
documented status codes, content types, headers and bodies; what the document allows is
accepted and what it forbids refused; auth enforced; 405 with Allow. /admin is called with
an admin token, /v1 with the tenant's, /metrics with METRICS_TOKEN.

Where a check is wrong for us it is narrowed for one operation or one kind of answer, with
the reason beside it (`config_for`, `judged_checks`); docs/reliability.md lists them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis import Case, Response
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import allow_header_conformance, positive_data_acceptance

from app.core.config import Settings
from app.db.engine import build_engine
from app.db.migrate import migrate_shared
from app.main import create_app
from app.services.provisioning import create_tenant
from tests.conftest import SERVER_URL, MakeToken, ServedApp, with_database
from tests.factories import ProjectFactory, TaskFactory

# Deterministic and bounded: the same requests on every run, a few per operation and phase.
SEED = 15
MAX_EXAMPLES = 10
STATEFUL_SCENARIOS, STATEFUL_STEPS = 12, 6
METRICS_TOKEN = "conformance-metrics-token"

# Operations whose If-Match can name an ETag that is not the resource's current one.
PRECONDITIONED = r"^/v1/(projects/\{project_id\}|tasks/\{task_id\})$"

BASE_CONFIG: dict[str, Any] = {
    "seed": SEED,
    # Timing is the machine's, not the API's: a loaded CI runner must not fail the test.
    "suppress-health-check": ["too_slow"],
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "checks": {"enabled": True},  # every check schemathesis has
}


@dataclass(frozen=True)
class Served:
    url: str
    admin_token: str
    tenant_token: str
    admin_target: str  # a tenant's slug, for the admin plane to read and change
    project_id: str
    task_id: str


def config_for(served: Served) -> dict[str, Any]:
    def on(method: str, path: str, **parameters: str) -> dict[str, Any]:
        return {"include-method": method, "include-path": path, "parameters": parameters}

    return {
        **BASE_CONFIG,
        "base-url": served.url,
        "operations": [
            {
                # An If-Match that does not name the current ETag answers 412, as RFC 9110
                # section 13.1.1 requires (whatever the value: one that is neither `*` nor entity
                # tags is a false condition too): the precondition failed, not the request. The
                # check knows no 412; it is told of it for these four operations only.
                "include-path-regex": PRECONDITIONED,
                "include-method-regex": "^(PATCH|DELETE)$",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": [
                            "2xx",
                            "3xx",
                            "401",
                            "403",
                            "404",
                            "409",
                            "412",
                            "429",
                        ]
                    }
                },
            },
            # Reads and changes aim at resources that exist, so that their 200s (and what a
            # change refuses) are checked, not only 404s. Deletes keep drawn ids: their 404s,
            # and the refusal of malformed ids, are checked there.
            on("GET", "/admin/v1/tenants/{slug}", slug=served.admin_target),
            on("PATCH", "/admin/v1/tenants/{slug}", slug=served.admin_target),
            on("POST", "/admin/v1/tenants/{slug}/suspend", slug=served.admin_target),
            on("POST", "/admin/v1/tenants/{slug}/resume", slug=served.admin_target),
            on("GET", "/v1/projects/{project_id}", project_id=served.project_id),
            on("PATCH", "/v1/projects/{project_id}", project_id=served.project_id),
            on("POST", "/v1/projects/{project_id}/tasks", project_id=served.project_id),
            on("GET", "/v1/projects/{project_id}/tasks", project_id=served.project_id),
            on("GET", "/v1/tasks/{task_id}", task_id=served.task_id),
            on("PATCH", "/v1/tasks/{task_id}", task_id=served.task_id),
        ],
    }


@pytest.fixture(scope="module")
async def conformance_settings(settings: Settings) -> AsyncIterator[Settings]:
    """The session's settings on a database of this module's own: the admin plane's calls
    create, suspend and delete tenants at will, and no other test sees them."""
    name = f"tessera_conformance_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(SERVER_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    own = settings.model_copy(
        update={"database_url": with_database(SERVER_URL, name), "metrics_token": METRICS_TOKEN}
    )
    engine = build_engine(own)
    try:
        await migrate_shared(engine)
    finally:
        await engine.dispose()
    yield own
    conn = await asyncpg.connect(SERVER_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def served(conformance_settings: Settings, make_token: MakeToken) -> AsyncIterator[Served]:
    engine = build_engine(conformance_settings)
    try:
        tenant, admin_target = [
            await create_tenant(
                engine,
                conformance_settings,
                slug=f"conf-{uuid.uuid4().hex[:10]}",
                name="Conformance",
                plan="pro",
                rate_limit="100000/minute",  # thousands of requests, none of them a 429
            )
            for _ in range(2)
        ]
    finally:
        await engine.dispose()
    server = ServedApp()
    server.start(create_app(conformance_settings), lifespan="on")
    tenant_token = make_token(tenant=tenant.slug, scopes="api:read api:write")
    try:
        # Something to find: list pages with items, and ids the stateful chains can follow.
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {tenant_token}"}
        ) as client:
            project = await client.post("/v1/projects", json=ProjectFactory())
            assert project.status_code == 201, project.text
            task = await client.post(
                f"/v1/projects/{project.json()['id']}/tasks", json=TaskFactory()
            )
            assert task.status_code == 201, task.text
        yield Served(
            url=server.url,
            admin_token=make_token(tenant=None, scopes="platform:admin"),
            tenant_token=tenant_token,
            admin_target=admin_target.slug,
            project_id=project.json()["id"],
            task_id=task.json()["id"],
        )
    finally:
        server.stop()


def load_schema(
    served: Served, plane: str = "", leave_out: Collection[tuple[str, str]] = ()
) -> Any:
    """The served document as schemathesis sees it, with each plane's credentials; `plane`
    (a path regex) keeps only the paths it matches, less the `leave_out` operations
    (method, path)."""
    document = httpx.get(f"{served.url}/openapi.json").json()
    document["paths"] = {
        path: {m: op for m, op in item.items() if (m.upper(), path) not in leave_out}
        for path, item in document["paths"].items()
        if re.match(plane, path)
    }
    schema = schemathesis.openapi.from_dict(
        document, config=SchemathesisConfig.from_dict(config_for(served))
    )

    @schema.auth(refresh_interval=None)
    class PlaneToken:
        """The admin token on /admin, METRICS_TOKEN on /metrics, the tenant's token on /v1."""

        def get(self, case: Case, ctx: Any) -> str:
            path = case.operation.path
            if path.startswith("/admin/"):
                return served.admin_token
            if path == "/metrics":
                return METRICS_TOKEN
            return served.tenant_token

        def set(self, case: Case, data: str, ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return schema


@pytest.fixture(scope="module")
def api_schema(served: Served) -> Any:
    return load_schema(served)


def test_metrics_is_documented_with_the_security_it_has(app: FastAPI, served: Served) -> None:
    """Open when METRICS_TOKEN is unset (the session's app), a bearer token when it is set."""
    assert "security" not in app.openapi()["paths"]["/metrics"]["get"]
    document = httpx.get(f"{served.url}/openapi.json").json()
    metrics = document["paths"]["/metrics"]["get"]
    assert metrics["security"] == [{"metricsToken": []}]
    assert "401" in metrics["responses"]
    assert document["components"]["securitySchemes"]["metricsToken"]["scheme"] == "bearer"


def judged_checks(case: Case, response: Response) -> list[Any]:
    """The checks not to apply to this one answer (empty: all of them apply)."""
    # The contract answers a repeated Idempotency-Key with another body 422
    # `idempotency_key_reused` (CONTRACT section 5). Schemathesis draws keys from a small
    # space and reuses them across bodies, so a schema-valid request can be this refusal.
    if response.status_code == 422 and b'"code":"idempotency_key_reused"' in response.content:
        return [positive_data_acceptance]
    # A tenant's plan must name a plan that exists (422 `unknown_plan`): plans are data, so
    # the document gives the form of a plan's name and cannot list the names that exist.
    if response.status_code == 422 and b'"code":"unknown_plan"' in response.content:
        return [positive_data_acceptance]
    # /admin/v1/tenants/import is also /admin/v1/tenants/{slug} of a tenant named "import"
    # (GET, PATCH, DELETE route there), and Allow says so: the document lists the two paths
    # apart, so the check counts those methods as undocumented on this one.
    if case.operation.path == "/admin/v1/tenants/import":
        # Any bytes fit the body's schema (a binary string); whether they are an archive,
        # intact and of a known schema version, no schema can say. The document lists
        # these refusals (422 `invalid_archive`, `archive_schema_unsupported`).
        if response.status_code == 422 and (
            b'"code":"invalid_archive"' in response.content
            or b'"code":"archive_schema_unsupported"' in response.content
        ):
            return [allow_header_conformance, positive_data_acceptance]
        return [allow_header_conformance]
    return []


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_as_the_document_says(case: Case) -> None:
    response = case.call()
    case.validate_response(response, excluded_checks=judged_checks(case, response))


def plan_names(url: str, headers: dict[str, str]) -> set[str]:
    return {plan["name"] for plan in httpx.get(f"{url}/admin/v1/plans", headers=headers).json()}


def admin_slugs(url: str, headers: dict[str, str]) -> list[str]:
    """Every tenant's slug, page by page."""
    slugs: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = httpx.get(f"{url}/admin/v1/tenants", params=params, headers=headers).json()
        slugs += [item["slug"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return slugs


# The tenant plane first: the admin plane's chains suspend the tenants they list, its tenant
# included.
@pytest.mark.parametrize("plane", ["^/v1/", "^/admin/"])
def test_chains_of_calls_answer_as_the_document_says(served: Served, plane: str) -> None:
    """Create, read, change and delete the resources the answers name, in sequence."""

    # Hypothesis replays a chain's draws and requires the same answers: a chain must not
    # change what the next one finds. So the admin chains leave out what cannot be undone
    # (deleting a tenant; a move, which on plain PostgreSQL always answers 409
    # not_distributed; deleting a plan, which could take `free`, every new tenant's default,
    # from the chains after it), and each chain's own tenants and plans are deleted after it
    # (a chain that recreated one under a name an earlier chain had taken would get 409, not
    # 201: FlakyStrategyDefinition). The per-operation test above covers every operation.
    schema = load_schema(
        served,
        plane,
        leave_out={
            ("DELETE", "/admin/v1/tenants/{slug}"),
            ("POST", "/admin/v1/tenants/{slug}/move"),
            ("DELETE", "/admin/v1/plans/{name}"),
        },
    )
    admin = {"Authorization": f"Bearer {served.admin_token}"}
    before = set(admin_slugs(served.url, admin))
    plans_before = plan_names(served.url, admin)

    class Chains(schema.as_state_machine()):  # type: ignore[misc]
        def teardown(self) -> None:
            for slug in set(admin_slugs(served.url, admin)) - before:
                base = f"{served.url}/admin/v1/tenants/{slug}"
                httpx.post(f"{base}/suspend", headers=admin)
                assert httpx.delete(base, headers=admin).status_code == 204
            for name in plan_names(served.url, admin) - plans_before:
                deleted = httpx.delete(f"{served.url}/admin/v1/plans/{name}", headers=admin)
                assert deleted.status_code == 204

        def validate_response(
            self,
            response: Response,
            case: Case,
            additional_checks: list[Any] | None = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(
                response,
                additional_checks=additional_checks,
                excluded_checks=judged_checks(case, response),
                transport_kwargs=kwargs or None,
                recorder=getattr(self, "recorder", None),
            )

    Chains.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
