"""The README and docs/ hold together: links land, pages open with a contents list, commands use
the virtualenv, every setting and every API path is documented once, and facts are not repeated
from page to page. (The pages' examples run in ``tests/test_docs_examples.py``.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"^ *```.*?^ *```", re.M | re.S)
#: Read from the environment outside app/config.py's SETTINGS (by the app factory).
EXTRA_VARIABLES = {"SWITCHBOARD_INSTANCE_PATH"}


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _prose(page: Path) -> str:
    """The page without its fenced code blocks."""
    return FENCED.sub("", page.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", _prose(page), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_link_lands_on_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert broken == [], f"{_name(page)}: links to nothing"


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_each_docs_page_opens_with_what_it_covers_and_its_contents(page: Path) -> None:
    """``# Title``, a paragraph, then a list linking every ``##`` section in order."""
    text = _prose(page)
    lines = text.splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2].strip()
    first_list = next(i for i, line in enumerate(lines) if line.startswith("- "))
    assert all(not line.startswith("#") for line in lines[1:first_list])
    contents = []
    for line in lines[first_list:]:
        if not line.startswith("- "):
            break
        contents.append(line)
    listed = [re.fullmatch(r"- \[.+\]\(#([\w-]+)\)", line) for line in contents]
    assert all(listed), contents
    sections = [slug(h) for h in re.findall(r"^## (.+)$", text, re.M)]
    assert [m.group(1) for m in listed if m] == sections


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=_name)
def test_every_command_uses_the_virtualenv(page: Path) -> None:
    """Commands in code blocks and inline code name ``.venv/bin/…`` (``pip`` in prose is fine).

    docs/plugins.md is exempt: its commands run in the plugin author's own environment.
    """
    if page.name == "plugins.md":
        return
    text = page.read_text()
    command = re.compile(r"(?:^|\$\(|&&\s*|;\s*)(flask|python3?|gunicorn|pip|pytest)\s", re.M)
    code = "\n".join(FENCED.findall(text))
    offenders = [m.group(0).strip() for m in command.finditer(code)]
    offenders += re.findall(r"`(?:flask|python3?|gunicorn|pytest) [^`]*`", text)
    assert offenders == []
    assert "cdn.jsdelivr" not in text


def _configuration_rows() -> dict[str, str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*?) \|", text, re.M)}


def test_the_configuration_page_has_a_row_for_every_setting_with_its_default() -> None:
    rows = _configuration_rows()
    assert set(rows) == {s.env for s in SETTINGS} | EXTRA_VARIABLES
    for setting in SETTINGS:
        if setting.default:  # a literal default is shown as it is given
            assert rows[setting.env] == f"`{setting.default}`", setting.env


def test_no_page_names_a_setting_that_does_not_exist() -> None:
    known = {s.env for s in SETTINGS} | EXTRA_VARIABLES
    for page in [*PAGES, ROOT / "docs" / "examples" / "live-deliveries.html"]:
        named = set(re.findall(r"\bSWITCHBOARD_[A-Z_]*[A-Z]\b", page.read_text()))
        # Families written with a placeholder ("SWITCHBOARD_RETENTION_DAYS_*").
        named = {n for n in named if not n.endswith("_DAYS")}
        assert named <= known, f"{_name(page)}: {sorted(named - known)}"


def test_the_api_page_lists_every_path_of_the_spec() -> None:
    """Each path's last fixed segment appears in the resources table of docs/api.md."""
    spec = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    text = (ROOT / "docs" / "api.md").read_text()
    table = text[text.index("## Resources") :]
    missing = []
    for path in spec["paths"]:
        fixed = [p for p in path.split("/") if p and not p.startswith("{")]
        if not re.search(rf"[`/]{re.escape(fixed[-1])}[`/]", table):
            missing.append(path)
    assert missing == []


def test_no_fact_is_written_twice_across_the_pages() -> None:
    """A long line of prose or a table row lives on one page; others link to it."""
    seen: dict[str, str] = {}
    repeated = []
    for page in [ROOT / "README.md", *DOCS]:
        for line in _prose(page).splitlines():
            line = line.strip()
            if len(line) < 60 or line.startswith(("<!--", "- [", "#")):
                continue
            if "a test executes" in line or "make run SWITCHBOARD_ALLOWED_NETWORKS" in line:
                continue  # the note on each page whose examples run, not a fact
            if line in seen and seen[line] != page.name:
                repeated.append((seen[line], page.name, line))
            seen.setdefault(line, page.name)
    assert repeated == []
