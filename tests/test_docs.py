"""The documentation holds together: every relative link in README.md and docs/*.md resolves; the README is short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKDOWN_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

# [text](target) or ![alt](target "title"): the target is the first run of non-space characters.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
EXTERNAL = ("http://", "https://", "mailto:")


def markdown_links(text: str) -> list[str]:
    """The link targets of a Markdown text, outside fenced code blocks and inline code."""
    targets: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            targets.extend(LINK.findall(INLINE_CODE.sub("", line)))
    return targets


def relative_targets(text: str) -> list[str]:
    """The relative targets (no scheme, no page-local '#fragment'), with any '#fragment' removed."""
    return [
        target.split("#", 1)[0]
        for target in markdown_links(text)
        if not target.startswith("#") and not target.lower().startswith(EXTERNAL)
    ]


def test_the_link_finder_sees_relative_links_only() -> None:
    text = (
        "[a](docs/api.md) [b](https://x.org/y) [c](#here) [d](../README.md#configuration) "
        "[e](mailto:a@b.c) ![f](benchmarks.png) `[g](not/a/link.md)`\n```\n[h](in/a/fence.md)\n```\n"
    )
    assert relative_targets(text) == ["docs/api.md", "../README.md", "benchmarks.png"]


@pytest.mark.parametrize("markdown", MARKDOWN_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(markdown: Path) -> None:
    missing = [
        target
        for target in relative_targets(markdown.read_text(encoding="utf-8"))
        if not (markdown.parent / target).exists()
    ]
    assert not missing, f"{markdown.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_the_readme_is_at_most_200_lines() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"
