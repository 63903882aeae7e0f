"""The layers of app/ point one way (docs/architecture.md): each package imports only what
its rule allows, read from the source's import statements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"

# Package (most specific first wins) -> what it may import from app. Composition roots
# (app.main, app.cli, app.commands, app.devissuer) wire everything and are not listed.
RULES: dict[str, tuple[str, ...]] = {
    "app.core": ("app.core",),
    "app.metrics": ("app.core",),
    "app.runtime": (),
    "app.schemas": ("app.core", "app.schemas"),
    "app.redis": ("app.core", "app.redis"),
    "app.auth": ("app.core", "app.metrics", "app.auth"),
    # Repositories run statements through the executor and never reach the pinning code.
    "app.db.repositories": ("app.db.executor", "app.db.models", "app.db.repositories"),
    "app.db": ("app.core", "app.db"),
    "app.services": (
        "app.core",
        "app.db",
        "app.redis",
        "app.metrics",
        "app.schemas",
        "app.services",
    ),
    # HTTP: no SQL, no repositories, no pool; the executor only as the type loaders take.
    "app.api": (
        "app.core",
        "app.api",
        "app.services",
        "app.schemas",
        "app.auth",
        "app.metrics",
        "app.db.executor",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                # `from app.db import tenancy` imports the module app.db.tenancy.
                found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "app" or name.startswith("app.")}


def rule_for(module: str) -> tuple[str, ...] | None:
    for package in sorted(RULES, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return RULES[package]
    return None


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


MODULES = sorted(APP.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_each_module_imports_only_what_its_layer_allows(path: Path) -> None:
    module = module_name(path)
    allowed = rule_for(module)
    if allowed is None:
        return  # a composition root
    wrong = sorted(name for name in app_imports(path) if not within(name, allowed))
    assert wrong == [], f"{module} may import only {allowed}"


def test_every_package_of_app_has_a_rule_or_is_a_composition_root() -> None:
    roots = {"app", "app.main", "app.cli", "app.commands", "app.devissuer"}
    unruled = {
        module_name(path)
        for path in MODULES
        if rule_for(module_name(path)) is None
        and not any(module_name(path) == r or module_name(path).startswith(r + ".") for r in roots)
    }
    assert unruled == set()


def test_the_rule_catches_a_repository_reaching_the_pinning_code(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text("from app.db.pool import TenantConnections\nfrom app.db import tenancy\n")
    names = app_imports(source)
    allowed = RULES["app.db.repositories"]
    assert sorted(n for n in names if not within(n, allowed)) == [
        "app.db.pool.TenantConnections",
        "app.db.tenancy",
    ]


def test_no_module_of_app_is_over_350_lines() -> None:
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 350}
    assert long == {}
