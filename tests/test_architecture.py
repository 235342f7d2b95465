"""The layout's rules: the plugin API stays importable, and packages import without cycles."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
DOCS = ROOT / "docs" / "plugins.md"

#: Modules of a package that form the HTTP layer on top of every package: they may import any
#: package, and nothing but the app factory imports them.
HTTP_LAYER = {"resources", "schemas", "inbound"}
#: The only modules allowed at the root of ``app/``.
ROOT_MODULES = {"__init__", "factory", "config", "cli", "devserver", "audit"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``app.…`` module that ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "app":
                found.update(f"app.{alias.name}" for alias in node.names)
            elif node.module.startswith("app."):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("app."))
    return found


def _modules() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in APP.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes, or None when it is acyclic."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_modules_import_without_cycles() -> None:
    assert _cycle(_modules()) is None


def test_packages_below_the_http_layer_form_a_dag() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, imported in _modules().items():
        if module.rsplit(".", 1)[-1] in HTTP_LAYER:
            continue
        for target in imported:
            if _package(target) != _package(module):
                graph[_package(module)].add(_package(target))
    assert _cycle(graph) is None


def test_only_the_http_layer_and_the_factory_import_the_http_layer() -> None:
    offenders = [
        f"{module} imports {target}"
        for module, imported in _modules().items()
        for target in imported
        if target.rsplit(".", 1)[-1] in HTTP_LAYER
        and module.rsplit(".", 1)[-1] not in HTTP_LAYER
        and module != "app.factory"
    ]
    assert offenders == []


def test_app_root_keeps_only_the_shell() -> None:
    loose = {path.stem for path in APP.glob("*.py")}
    assert loose == ROOT_MODULES


def _documented_imports() -> list[str]:
    """The ``from app… import …`` statements of every Python example in docs/plugins.md."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    statement = re.compile(r"^from app[.\w]* import (?:\([^)]*\)|.*)$", re.M)
    return [match for block in blocks for match in statement.findall(block)]


@pytest.mark.parametrize("statement", _documented_imports())
def test_every_documented_import_works(statement: str) -> None:
    exec(statement, {})  # noqa: S102 - our own documentation's import lines


def test_the_plugin_api_names_in_the_docs_are_exported() -> None:
    import app
    import app.connectors
    from app.connectors import contract, declarative, jsonschemas

    bullet = re.search(r"`from app\.connectors import \.\.\.`:(.*?)\n\n", DOCS.read_text(), re.S)
    assert bullet is not None
    names = re.findall(r"`(\w+)`", bullet.group(1))
    assert {"Connector", "Action", "ActionError", "TestResult"} <= set(names)
    assert {"DeclarativeConnector", "action", "provides", "secret_url"} <= set(names)
    for name in names:
        assert name in app.connectors.__all__, name
        homes = (contract, declarative, jsonschemas)  # re-exported, never copied
        assert any(getattr(app.connectors, name) is getattr(m, name, None) for m in homes), name
    assert app.hookimpl is app.connectors.hookspecs.hookimpl


#: Modules that may query tenant-owned tables across tenants, and why. Everything else goes
#: through ``TenantOwned.of`` / ``get_of`` / ``update_of`` / ``delete_of``, which require one.
OPERATOR_WIDE = {
    "app.store.retention": "prunes the history of every tenant",
    "app.events.dispatch": "claims every tenant's due deliveries, fairly across tenants",
    "app.events.reconciler": "wakes dispatch for any tenant's due deliveries",
    "app.events.routes": "loads every tenant's routes once, kept apart by tenant",
    "app.events.progress": "the operator's readiness signal covers every tenant",
    "app.health.resources": "readiness is the operator's, not a tenant's",
    "app.metrics.exposition": "metrics are the operator's: no tenant label, every tenant",
    "app.tenants.directory": "a user's memberships span the tenants they belong to",
    "app.alerts.evaluate": "one pass evaluates every tenant's rules, each on its own data",
    "app.alerts.notify": "one pass sends every tenant's due notices",
    "app.oauth.tokens": "the workers refresh every tenant's expiring tokens",
    "app.auth.access": "a presented key (found by its prefix) is what names the tenant",
    "app.connectors.inbound": "the integration id in the URL is what names the tenant",
    "app.oauth.sso": "the SSO integration, by id or claimed domain, names the tenant",
    "app.oauth.sso_accounts": "an admin role in any tenant keeps an account from email linking",
    "app.integrations.service": "an email domain may be claimed by one tenant only",
    "app.gateway.resources": "runs the SQL of a scoped query, built once (Model.raw)",
    "app.console.sessions": "a presented portal link or console cookie names the tenant",
    "app.console.resources": "operators revoke any tenant's portal session by its id",
}
#: Calls that read, change or delete rows without naming a tenant.
_UNSCOPED = {"select", "update", "delete", "get", "get_or_none", "get_by_id", "raw", "delete_by_id"}


def _tenant_owned_names() -> set[str]:
    from app.store.models import TENANT_OWNED

    return {model.__name__ for model in TENANT_OWNED}


def test_tenant_owned_tables_are_queried_through_the_scoped_path() -> None:
    owned = _tenant_owned_names()
    offenders = []
    for path in [*APP.rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        module = _module_name(path)
        if module in OPERATOR_WIDE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in owned
                and node.func.attr in _UNSCOPED
            ):
                offenders.append(f"{module}:{node.lineno} {node.func.value.id}.{node.func.attr}")
    assert offenders == [], "query tenant-owned tables with Model.of(tenant_id) & co."


def test_every_operator_wide_module_exists_and_still_needs_it() -> None:
    owned = _tenant_owned_names()
    modules = {_module_name(path): path for path in APP.rglob("*.py")}
    for module in OPERATOR_WIDE:
        assert module in modules, module
        calls = [
            node
            for node in ast.walk(ast.parse(modules[module].read_text()))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in owned
            and node.func.attr in _UNSCOPED
        ]
        assert calls, f"{module} no longer queries across tenants: drop it from OPERATOR_WIDE"
