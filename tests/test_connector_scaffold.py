"""``flask --app app connector new NAME``: the package it writes passes its own tests as
generated, builds as its own distribution and loads as a plugin, versioned by its metadata."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from app.connectors.registry import ENTRY_POINT_GROUP, PluginRegistry

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "bXlzZWNyZXRrZXlteXNlY3JldGtleW15c2VjcmV0a2U="


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One package, written by the command as an author would run it."""
    parent = tmp_path_factory.mktemp("plugins")
    run = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "connector", "new", "acme_alerts"],
        cwd=parent,
        # A key of its own, so the app it loads writes no instance/secret.key into the checkout.
        env={**os.environ, "PYTHONPATH": str(ROOT), "SWITCHBOARD_SECRET_KEYS": SECRET_KEY},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    root = parent / "switchboard-acme-alerts"
    assert f"created {root.name}:" in run.stdout
    return root


def test_the_package_has_the_entry_point_module_readme_and_tests(generated: Path) -> None:
    files = sorted(str(p.relative_to(generated)) for p in generated.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "src/switchboard_acme_alerts/__init__.py",
        "tests/test_acme_alerts.py",
    ]
    project = tomllib.loads((generated / "pyproject.toml").read_text())["project"]
    assert project["name"] == "switchboard-acme-alerts"
    assert project["entry-points"][ENTRY_POINT_GROUP] == {"acme_alerts": "switchboard_acme_alerts"}
    assert "$" not in "".join((generated / name).read_text() for name in files)


def test_the_package_passes_its_own_tests_as_generated(generated: Path) -> None:
    """As its CI would run them: pytest in its folder, Switchboard importable, nothing installed."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=generated,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^7 passed", run.stdout, re.M), run.stdout


def test_the_package_installs_and_loads_with_its_distributions_version(
    generated: Path, tmp_path: Path
) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path)]
        + [str(generated)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if build.returncode and re.search(
        r"No matching distribution|Could not find a version", build.stderr
    ):
        pytest.skip("no package index reachable to build the wheel")
    assert build.returncode == 0, build.stderr
    [wheel] = tmp_path.glob("switchboard_acme_alerts-0.1.0-*.whl")
    site = tmp_path / "site"  # installed by unpacking: the shared environment is not touched
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    sys.path.insert(0, str(site))
    try:
        [ep] = [
            ep
            for dist in importlib.metadata.distributions(path=[str(site)])
            for ep in dist.entry_points
            if ep.group == ENTRY_POINT_GROUP
        ]
        registry = PluginRegistry()
        registry.load_entry_points(entry_points=[ep])
        [row] = registry.statuses()
        assert (row.name, row.status, row.version) == ("acme_alerts", "loaded", "0.1.0")
        assert (row.distribution, row.distribution_version) == ("switchboard-acme-alerts", "0.1.0")
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("switchboard_acme_alerts", None)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Acme-Alerts", "'Acme-Alerts' is not a connector name"),
        ("acme_alerts", "switchboard-acme-alerts already exists"),
    ],
)
def test_a_bad_name_or_an_existing_folder_is_refused(
    app: Any, generated: Path, name: str, message: str
) -> None:
    result = app.test_cli_runner().invoke(
        args=["connector", "new", name, "--dir", str(generated.parent)]
    )
    assert result.exit_code == 1 and message in result.output, result.output
