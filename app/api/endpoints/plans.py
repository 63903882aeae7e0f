"""Admin API: plans, the limits and quotas tenants get by name (scope AUTH_ADMIN_SCOPE)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status

from app.api.dependencies.auth import require_admin
from app.api.dependencies.db import EngineDep
from app.api.errors import ADMIN_ERRORS, responses
from app.core.slugs import SLUG_PATTERN
from app.schemas.plans import PlanCreate, PlanOut, PlanUpdate
from app.schemas.tenants import PLAN_NAME_MAX, PLAN_NAME_MIN
from app.services import plans as service

router = APIRouter(
    prefix="/admin/v1/plans",
    tags=["admin: plans"],
    dependencies=[Depends(require_admin)],
    responses=responses(*ADMIN_ERRORS),
)

PlanPathName = Annotated[
    str, Path(min_length=PLAN_NAME_MIN, max_length=PLAN_NAME_MAX, pattern=SLUG_PATTERN)
]


def _out(record: service.PlanRecord) -> PlanOut:
    return PlanOut.model_validate(record, from_attributes=True)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PlanOut,
    summary="Create a plan (Location); absent limits: the server's defaults, no quota",
    responses={
        **responses(409),
        409: {**responses(409)[409], "description": "A plan of this name exists (`plan_exists`)"},
    },
)
async def create_plan(body: PlanCreate, engine: EngineDep, response: Response) -> PlanOut:
    record = await service.create_plan(engine, **body.model_dump())
    response.headers["Location"] = f"/admin/v1/plans/{record.name}"
    return _out(record)


@router.get("", response_model=list[PlanOut], summary="Every plan, by name")
async def list_plans(engine: EngineDep) -> list[PlanOut]:
    return [_out(record) for record in await service.list_plans(engine)]


@router.get(
    "/{name}",
    response_model=PlanOut,
    summary="One plan",
    responses={**responses(404), 404: {**responses(404)[404], "description": "`plan_not_found`"}},
)
async def get_plan(name: PlanPathName, engine: EngineDep) -> PlanOut:
    return _out(await service.get_plan(engine, name))


@router.patch(
    "/{name}",
    response_model=PlanOut,
    summary="Change a plan's limits (in force for its tenants everywhere within 1 s)",
    responses={**responses(404), 404: {**responses(404)[404], "description": "`plan_not_found`"}},
)
async def update_plan(name: PlanPathName, body: PlanUpdate, engine: EngineDep) -> PlanOut:
    return _out(await service.update_plan(engine, name, **body.model_dump(exclude_unset=True)))


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a plan no tenant is on",
    responses={
        **responses(404, 409),
        404: {**responses(404)[404], "description": "`plan_not_found`"},
        409: {**responses(409)[409], "description": "Tenants are on it (`plan_in_use`)"},
    },
)
async def delete_plan(name: PlanPathName, engine: EngineDep) -> Response:
    await service.delete_plan(engine, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
