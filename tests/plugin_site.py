"""A plugin "installed" into a throwaway directory, as pip would lay it out, without pip.

The directory holds the plugin's modules and a ``*.dist-info`` with its metadata and entry
points. A process with the directory on its path (``PYTHONPATH`` for a worker, ``sys.path`` for
the test's own app) finds the plugin through ``importlib.metadata`` like an installed one, and
the shared environment is never written to.
"""

from __future__ import annotations

from pathlib import Path


def install_plugin(
    site: Path,
    distribution: str,
    version: str,
    modules: dict[str, str],
    entry_points: dict[str, str],
) -> Path:
    """Write ``modules`` (name -> source) and the distribution's metadata into ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[switchboard.connectors]\n{lines}")
    return site
