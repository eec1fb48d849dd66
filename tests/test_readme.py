"""The README and the docs pages: their Python examples run as written, their links point to files that exist.

Every fenced block whose info string is exactly ``python`` runs, in order, in one namespace per page,
with a temporary working directory (examples write plans and pictures). Any other fence (``bash``,
``json``, ``python no-run`` for real checkpoints or multi-process launches, ...) is not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 150

# Tiny models gain nothing from threads, and on a shared 2-core machine two threads wait on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def _page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """(info string, code, line number of the opening fence) of every fenced block, in order."""
    blocks: list[tuple[str, str, int]] = []
    info: str | None = None
    start, body = 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if info is None:
            match = re.match(r"^```(.*)$", line)
            if match:
                info, start, body = match.group(1).strip(), number, []
        elif line.rstrip() == "```":
            blocks.append((info, "\n".join(body) + "\n", start))
            info = None
        else:
            body.append(line)
    assert info is None, f"a fence opened at line {start} is never closed"
    return blocks


def prose(text: str, *, inline_code: bool = False) -> str:
    """The text outside fenced blocks, without inline code spans (or with them, unquoted)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line.replace("`", "") if inline_code else re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors: set[str] = set()
    for line in prose(text, inline_code=True).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            anchor, n = base, 0
            while anchor in anchors:
                n += 1
                anchor = f"{base}-{n}"
            anchors.add(anchor)
    return anchors


def relative_links(text: str) -> list[str]:
    """Targets of the page's Markdown links and images that are not URLs."""
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose(text))
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [(code, start) for info, code, start in fenced_blocks(page.read_text()) if info == "python"]
    if page == README:
        assert blocks, "README has no python example"
    if not blocks:
        pytest.skip(f"{_page_id(page)} has no python block")
    namespace: dict = {"__name__": f"example_{page.stem}"}
    for code, start in blocks:
        # Padded so that a traceback names the line of the page.
        exec(compile("\n" * start + code, str(page), "exec"), namespace)


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_docs_exist_and_readme_links_them():
    assert DOCS, "docs/ has no page"
    linked = {(README.parent / t.split("#")[0]).resolve() for t in relative_links(README.read_text())}
    assert (ROOT / "docs" / "README.md").resolve() in linked


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_point_to_existing_files(page):
    broken = []
    for target in relative_links(page.read_text()):
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in heading_anchors(resolved.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{_page_id(page)}: " + "; ".join(broken)
