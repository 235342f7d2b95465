"""A new connector plugin package from the templates in ``template/``, passing its own tests.

``flask --app app connector new NAME`` writes ``switchboard-NAME/``: a ``pyproject.toml``
declaring the ``switchboard.connectors`` entry point, the connector module (the short form: a
notifier posting JSON to a secret webhook URL), a README, and tests that run it through
``PluginHarness`` against a local pytest-httpserver peer. Templates are ``string.Template``
text (``$name``, ``$package``, …), so each file reads as what it becomes.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from app.connectors.registry import CONNECTOR_NAME

__all__ = ["ScaffoldError", "new_plugin"]

TEMPLATES = Path(__file__).resolve().parent / "template"
#: Each template and where it goes in the new package.
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "connector.py.tmpl": "src/$package/__init__.py",
    "test_connector.py.tmpl": "tests/test_$name.py",
}


class ScaffoldError(ValueError):
    """The package cannot be written: a bad connector name, or its folder exists."""


def new_plugin(name: str, parent: Path) -> Path:
    """Write the package of connector ``name`` into ``parent``; return its folder.

    The distribution is ``switchboard-<name>`` (``_`` as ``-``), the import package
    ``switchboard_<name>``, and the entry point (the plugin name) ``name`` itself.
    """
    if not CONNECTOR_NAME.match(name):
        raise ScaffoldError(
            f"{name!r} is not a connector name: lower case letters, digits and _, "
            "starting with a letter"
        )
    distribution = f"switchboard-{name.replace('_', '-')}"
    root = parent / distribution
    if root.exists():
        raise ScaffoldError(f"{root} already exists")
    words = name.split("_")
    values = {
        "name": name,
        "package": f"switchboard_{name}",
        "distribution": distribution,
        "title": " ".join(word.capitalize() for word in words),
        "class_name": "".join(word.capitalize() for word in words) + "Connector",
    }
    for template, target in FILES.items():
        path = root / Template(target).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = (TEMPLATES / template).read_text()
        path.write_text(Template(text).substitute(values))
    return root
