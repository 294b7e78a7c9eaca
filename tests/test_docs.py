"""The README and the docs site hold together without building the site: every relative link
points to a file that exists (and to a heading that exists, where it names one), the README
stays one screen per idea, and every page of mkdocs.yml's nav is there. No network, no mkdocs:
`mkdocs build --strict` checks the same and more where the docs extra is installed."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
SNIPPET = re.compile(r"^--8<--\s+\"([^\"]+)\"\s*$", re.M)  # pymdownx.snippets, base_path "."
NAV_PAGE = re.compile(r"^\s*-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", re.M)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def expand(path: Path) -> str:
    """The page as the site renders it: snippet lines replaced by the files they include."""
    text = path.read_text(encoding="utf-8")
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), text)


def prose(text: str) -> str:
    """The text with code blocks and code spans removed: links there are examples, not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def heading_text(raw: str) -> str:
    """A heading as text: code spans keep their content, links their words, emphasis goes."""
    text = INLINE_CODE.sub(lambda m: m.group(2), raw)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"(?<!\w)[*_]+|[*_]+(?!\w)", "", text)


def mkdocs_slug(text: str) -> str:
    """Python-Markdown's toc slugify (what the site's anchors are)."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def github_slug(text: str) -> str:
    """GitHub's heading anchors (github-slugger): lowercase, punctuation dropped, each space a -."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a link may name: those the heading gets both on the site and on GitHub, so
    that one link works in both places."""
    found = set()
    for match in HEADING.finditer(FENCE.sub("", expand(path))):
        text = heading_text(match.group(2))
        if mkdocs_slug(text) == github_slug(text):
            found.add(mkdocs_slug(text))
    return found


def links(path: Path) -> list[str]:
    return LINK.findall(prose(expand(path)))


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in filter(relative, links(page)):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT)}")
        elif page.parent == DOCS and DOCS not in (dest, *dest.parents):
            broken.append(f"{target}: outside docs/, which the site cannot link to")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_included_files_link_only_within_themselves():
    """bench/RESULTS.md and CHANGELOG.md are read on GitHub and included into the site, where a
    relative link would resolve from docs/: only anchors of their own and absolute URLs work."""
    for name in ("bench/RESULTS.md", "CHANGELOG.md"):
        path = ROOT / name
        bad = [t for t in links(path) if relative(t) and not t.startswith("#")]
        assert not bad, f"{name} links relatively: {bad}"
        missing = [t for t in links(path) if t.startswith("#") and t[1:] not in anchors(path)]
        assert not missing, f"{name} names anchors it does not have: {missing}"


def test_readme_fits_in_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; guides belong in docs/"


def test_every_page_in_the_nav_exists_and_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config.split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    listed = NAV_PAGE.findall(nav)
    assert listed, "mkdocs.yml has no nav"
    missing = [p for p in listed if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav lists pages that do not exist: {missing}"
    unlisted = sorted({p.name for p in DOCS.glob("*.md")} - set(listed))
    assert not unlisted, f"pages in docs/ that the nav does not list: {unlisted}"


def test_included_files_exist():
    for page in DOCS.glob("*.md"):
        for name in SNIPPET.findall(page.read_text(encoding="utf-8")):
            assert (ROOT / name).is_file(), f"{page.name} includes {name}, which does not exist"


def test_the_slugs_agree_with_the_sites_and_githubs():
    assert mkdocs_slug("Bounded context: `--window N`") == "bounded-context-window-n"
    assert github_slug("Bounded context: --window N") == "bounded-context---window-n"
    assert mkdocs_slug("How fast is charlstm against the machine's own limits") == (
        "how-fast-is-charlstm-against-the-machines-own-limits"
    )
    assert heading_text("Weight averaging (`--ema`) and **bold**") == (
        "Weight averaging (--ema) and bold"
    )
