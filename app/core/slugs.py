"""What may name a tenant: the slug rules every layer applies (request validation, the
schema and role names derived from a slug, settings)."""

from __future__ import annotations

import re

SLUG_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
SLUG_MIN, SLUG_MAX = 3, 40
RESERVED_SLUGS = frozenset(
    {"admin", "public", "api", "www", "system", "root", "postgres", "template", "default"}
)
_SLUG_RE = re.compile(SLUG_PATTERN)


def slug_problem(slug: str) -> str | None:
    """Why `slug` cannot name a tenant, or None when it can."""
    if not SLUG_MIN <= len(slug) <= SLUG_MAX:
        return f"must be {SLUG_MIN}-{SLUG_MAX} characters"
    if not _SLUG_RE.fullmatch(slug):
        return (
            "must start with a letter and be lowercase letters and digits, "
            "in groups joined by single hyphens"
        )
    if slug in RESERVED_SLUGS or slug.startswith("pg"):
        return "is reserved"
    return None
