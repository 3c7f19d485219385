"""The fenced code blocks of README.md and docs/*.md, and which of them the suite runs.

A block is run when it is a shell block (```sh or ```bash) or a Python block that is a client
example (it uses dicomweb-client or pynetdicom), unless the line right before its fence is

    <!-- example: not run (the reason) -->

A Python example that goes on from the previous one of its page (its ``client``, its UIDs) says
so with ``<!-- example: continues the Python example above -->``: it runs after that one, in the
same program.

Every other block is left alone by its language: JSON and plain blocks are illustrations, a
Python block without a client is library code to read. A block in a shell-like language that is
not one of the two above (```shell, ```console, ...), or a block without a language that holds
commands (curl, manage.py, dcmtk's tools, make), is an error: it would be skipped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+.-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*example:\s*not run\s*\((?P<reason>.+)\)\s*-->\s*$")
CONTINUES = re.compile(r"^\s*<!--\s*example:\s*continues\b.*-->\s*$")
SHELL = {"sh", "bash"}
SHELL_LIKE = {"shell", "console", "zsh", "shell-session", "terminal", "ksh"}
CLIENT = re.compile(r"\b(dicomweb_client|DICOMwebClient|pynetdicom)\b")
# A command line in a block without a language: a shell block that lost its label.
COMMAND = re.compile(
    r"^\s*(\$\s+)?(curl|\S*python3?\s+manage\.py|manage\.py|findscu|movescu|getscu|storescu|"
    r"echoscu|make)\s",
    re.M,
)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, counted from 1
    lang: str
    text: str
    marker: str | None  # the reason given by a "not run" marker
    continues: bool = False  # runs after the page's previous Python example, in one program

    @property
    def name(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"

    @property
    def kind(self) -> str:
        """``shell`` or ``python`` (run), ``marked`` or ``other`` (not run)."""
        if self.marker is not None:
            return "marked"
        if self.lang in SHELL:
            return "shell"
        if self.lang == "python" and (self.continues or CLIENT.search(self.text)):
            return "python"
        return "other"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening["fence"]
        end = i + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence[0] * len(fence))
            and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        found.append(
            Block(
                path=path,
                line=i + 1,
                lang=opening["lang"].lower(),
                text="\n".join(lines[i + 1 : end]) + "\n",
                marker=marker["reason"].strip() if marker else None,
                continues=CONTINUES.match(before) is not None,
            )
        )
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in pages() for block in blocks_of(path)]


def problems(blocks: list[Block]) -> list[str]:
    """What the harness refuses: a block it would skip without anyone having said so."""
    out = []
    for block in blocks:
        if block.lang in SHELL_LIKE and block.marker is None:
            out.append(
                f"{block.name}: a ```{block.lang} block is neither run nor marked: write it as "
                "```sh, or put <!-- example: not run (why) --> on the line before its fence"
            )
        if (
            block.lang in ("", "text", "plain")
            and block.marker is None
            and COMMAND.search(block.text)
        ):
            out.append(
                f"{block.name}: commands in a block without a language are neither run nor "
                "marked: write it as ```sh, or put <!-- example: not run (why) --> before it"
            )
        if block.marker is not None and not block.marker.strip():
            out.append(f"{block.name}: a 'not run' marker needs its reason")
        if block.continues and block.kind != "python":
            out.append(f"{block.name}: only a Python client example can continue another")
    for path in {block.path for block in blocks}:
        page = [b for b in blocks if b.path == path and b.kind == "python"]
        if page and page[0].continues:
            out.append(f"{page[0].name}: continues, but no Python example comes before it")
    return out
