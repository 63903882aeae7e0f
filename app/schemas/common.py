"""Shared request/response building blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

T = TypeVar("T")

# PostgreSQL text cannot hold NUL: the pattern refuses it, and the document says so.
NO_NUL_PATTERN = r"^[^\x00]*$"


def _storable(value: str) -> str:
    # Nor can it hold a lone surrogate (a JSON "\ud800" escape decodes to one, and it has no
    # UTF-8 form); refused up front instead of failing in the database.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must not contain unpaired surrogates") from None
    return value


SafeStr = Annotated[str, Field(pattern=NO_NUL_PATTERN), AfterValidator(_storable)]


def without_null(**extra: Any) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` that documents `X | None` as X (and adds `extra`): for what may be
    left out but never be null, as a query or header parameter, or a PATCH field below."""

    def document(schema: dict[str, Any]) -> None:
        variants = schema.pop("anyOf", None)
        if variants is not None:
            kept = [variant for variant in variants if variant.get("type") != "null"]
            if len(kept) == 1:
                for key, value in kept[0].items():
                    schema.setdefault(key, value)
            else:
                schema["anyOf"] = kept
        schema.update(extra)

    return document


def refuse_null(value: Any) -> Any:
    """PATCH: a field may be left out, but `null` only where the resource allows it."""
    if value is None:
        raise ValueError("may not be null")
    return value


# A PATCH field that may be left out (None: not sent) but is a 422 when sent as null.
Omittable = Annotated[
    T | None, BeforeValidator(refuse_null), Field(json_schema_extra=without_null())
]


class RequestModel(BaseModel):
    """Every request body: unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def _without_defaults(schema: dict[str, Any]) -> None:
    for field in schema.get("properties", {}).values():
        field.pop("default", None)


class PatchModel(RequestModel):
    """A PATCH body: a field left out stays as it is, so the document gives no defaults (a
    `default: null` would offer `null` where it is refused)."""

    model_config = ConfigDict(json_schema_extra=_without_defaults)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
