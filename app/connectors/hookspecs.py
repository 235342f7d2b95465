"""Hook specifications: the functions a Switchboard plugin may implement.

A plugin is a module (or any object) with functions decorated by ``hookimpl``, listed under the
``switchboard.connectors`` entry-point group. Hooks are always called with keyword arguments,
and every hook's results are flattened by the caller; see ``docs/plugins.md``.
"""

# Hookspec bodies are never run: pluggy calls the plugins' hookimpls instead.
# mypy: disable-error-code="empty-body"

from __future__ import annotations

import pluggy

from app.connectors.contract import Connector, EventSpec

__all__ = ["hookimpl", "hookspec", "register_connectors", "register_event_types"]

hookspec = pluggy.HookspecMarker("switchboard")
hookimpl = pluggy.HookimplMarker("switchboard")


@hookspec
def register_connectors() -> list[Connector]:
    """Return the connectors this plugin provides."""


@hookspec
def register_event_types() -> dict[str, str | EventSpec]:
    """Return extra event types (name -> description or EventSpec) this plugin adds."""
