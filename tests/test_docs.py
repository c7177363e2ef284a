"""Every example in README.md and docs/*.md runs, so none can rot.

A page's fenced blocks run in order, in one fresh temporary working directory per page:

- ```python blocks are exec'd in one namespace per page (a later block uses an earlier one's names);
- ```sh / ```console blocks run each command line through ``rnnkit.cli.main(argv)`` (``shlex`` split, ``#`` starts a
  comment, a trailing ``\\`` continues the line) and must exit 0. In ``console`` blocks only lines starting with
  ``$ `` are commands (the rest is output). Every command must be an ``rnnkit`` one.

A block that must not run says so on the line just before its fence, with the reason in brackets:

- ``<!-- docs-test: skip (why) -->``: never run (``make demo``, ``pip install``, ``torchrun``, the benchmark
  scripts that need the [bench] extra and take minutes);
- ``<!-- docs-test: slow (why) -->``: runs only in ``test_examples_slow`` (marked ``slow``, and skipped unless
  ``RNNKIT_DOCS_SLOW=1``), for blocks that take minutes verbatim, such as the README's first run of each task. A
  block that needs a slow block's output is slow too.

Other fences (```text, ```toml, unlabelled output) are shown, not run.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rnnkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELLS = ("sh", "console", "bash", "shell")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<kind>\w+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it starts (1-based line of the fence), its language and text, and the
    docs-test marker on the line before it, if any."""

    page: Path
    line: int
    lang: str
    text: str
    marker: str | None = None
    reason: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The top-level fenced blocks of ``page``, in order; orphan or malformed markers are an error."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        marker = MARKER.match(lines[i - 1]) if i else None
        if lines[i].startswith("<!--") and "docs-test" in lines[i]:
            assert MARKER.match(lines[i]), f"{page.name}:{i + 1}: malformed marker {lines[i]!r}"
            assert i + 1 < len(lines) and FENCE.match(lines[i + 1]), f"{page.name}:{i + 1}: marker without a fence"
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{page.name}:{i + 1}: unclosed fence"
        found.append(
            Block(
                page,
                i + 1,
                m["lang"],
                "\n".join(lines[i + 1 : end]) + "\n",
                marker["kind"] if marker else None,
                ((marker["reason"] or "").strip() or None) if marker else None,
            )
        )
        i = end + 1
    return found


def commands(block: Block) -> list[list[str]]:
    """The command lines of a shell block, each as argv (without the leading ``$ ``)."""
    out, pending = [], ""
    for raw in block.text.splitlines():
        line = raw.strip()
        if block.lang == "console" and not pending:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def runnable(block: Block) -> bool:
    return block.lang == "python" or block.lang in SHELLS


ALL = [b for page in PAGES for b in blocks(page)]


def test_pages_found():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/getting-started.md"} <= names
    assert sum(runnable(b) and b.marker is None for b in ALL) >= 10  # the harness still finds the examples


@pytest.mark.parametrize("block", [b for b in ALL if b.marker], ids=lambda b: b.where)
def test_markers_say_why(block):
    assert block.marker in ("skip", "slow"), f"{block.where}: unknown docs-test marker {block.marker!r}"
    assert block.reason, f"{block.where}: a docs-test {block.marker} marker needs a reason: (why)"
    assert runnable(block), f"{block.where}: a {block.marker} marker on a ```{block.lang} block, which never runs"


@pytest.mark.parametrize("block", [b for b in ALL if b.lang in SHELLS and b.marker != "skip"], ids=lambda b: b.where)
def test_shell_blocks_are_rnnkit_commands(block):
    argvs = commands(block)
    assert argvs, f"{block.where}: a shell block with no command"
    for argv in argvs:
        assert argv[0] == "rnnkit", f"{block.where}: {shlex.join(argv)!r} is not an rnnkit command: mark it skip"


LINK = re.compile(r"\]\((?!https?://|#)(?P<target>[^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    # mkdocs --strict checks docs/ (anchors too); this covers README.md, which the site does not build
    for m in LINK.finditer(page.read_text(encoding="utf-8")):
        assert (page.parent / m["target"]).exists(), f"{page.name}: link to missing {m['target']}"


def run_page(page: Path, tmp_path: Path, monkeypatch, *, slow: bool) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks(page):
        if not runnable(block) or block.marker == "skip" or (block.marker == "slow" and not slow):
            continue
        if block.lang == "python":
            exec(compile(block.text, block.where, "exec"), namespace)
            continue
        started = time.monotonic()
        for argv in commands(block):
            status = main(argv[1:])
            assert status == 0, f"{block.where}: {shlex.join(argv)} exited {status}"
        if block.marker == "slow":  # the README promises about two minutes a block: the log shows each one's time
            sys.__stderr__.write(f"\n{block.where}: {time.monotonic() - started:.0f} s as written\n")


def _pages(slow: bool) -> list[Path]:
    def wanted(b: Block) -> bool:
        return runnable(b) and (b.marker == "slow" if slow else b.marker is None)

    return [p for p in PAGES if any(wanted(b) for b in blocks(p))]


@pytest.mark.parametrize("page", _pages(slow=False), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_examples(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch, slow=False)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RNNKIT_DOCS_SLOW"), reason="minutes of training: RNNKIT_DOCS_SLOW=1 runs it")
@pytest.mark.parametrize("page", _pages(slow=True), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_examples_slow(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch, slow=True)
