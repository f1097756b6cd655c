"""docs/method.md is the method the code cites: every "spec N.M" (and "spec N", "spec 9 item N", spec "Title") in
src/, bench/, tests/ and docs/ names a heading of it; and no doc links or points outside the repository (a clone has no
../shared)."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "method.md"
DOCS = [REPO / "README.md", REPO / "DEVELOPERS.md", *sorted((REPO / "docs").glob("*.md"))]

# "spec 5.4", "spec 3.2-3.6, 4", "spec 2-7, 10", "spec 3.2 step 8, 5.5", "spec 9 item 3", "spec 5.1 table"
NUM = r"\d+(?:\.\d+)?"
ONE = rf"{NUM}(?:\s*-\s*{NUM})?(?:\s+(?:item|step)\s+\d+)?"
REF = re.compile(rf"\bspec\s+({ONE}(?:(?:\s*,\s*|\s+and\s+){ONE})*)")
TITLE = re.compile(r"\bspec\s+\"([^\"]+)\"")


def cited(text: str) -> set[str]:
    """The section numbers a text cites: ranges give both ends (and, between whole sections, every one between);
    "9 item 3" is 9.3; a step number belongs to its section."""
    out = set()
    for m in REF.finditer(text):
        for part in re.split(r"\s*,\s*|\s+and\s+", m.group(1)):
            item = re.fullmatch(r"(\d+)\s+item\s+(\d+)", part)
            if item:
                out.add(f"{item.group(1)}.{item.group(2)}")
                continue
            part = re.sub(r"\s+step\s+\d+$", "", part)
            ends = [e.strip() for e in part.split("-")]
            out.update(ends)
            if len(ends) == 2 and all(e.isdigit() for e in ends):
                out.update(str(n) for n in range(int(ends[0]), int(ends[1]) + 1))
    return out


def headings() -> tuple[set[str], set[str]]:
    """(numbers, titles) of docs/method.md's headings: "## 5. Phase 1 ..." -> "5", "### 5.4 The ..." -> "5.4"."""
    text = METHOD.read_text(encoding="utf-8")
    heads = re.findall(r"^#{1,6}\s+(.*?)\s*$", text, flags=re.M)
    numbers = {m.group(1) for h in heads if (m := re.match(r"(\d+(?:\.\d+)?)\.?\s", h))}
    return numbers, set(heads)


def sources():
    for top in ("src", "bench", "tests", "docs"):
        for path in sorted((REPO / top).rglob("*")):
            if path.suffix in (".py", ".yaml", ".sh", ".md") and path.is_file() and path != Path(__file__).resolve():
                yield path


def test_the_reference_parser():
    text = ('(spec 3.2-3.6, 4) spec 2-7, 10; spec 3.2 step 8, 5.5; spec 9 item 3; spec 5.1 table: x; spec 9.21: y; '
            'spec 5.5, 9.13: numbers; spec 3.6 and 4; spec 6')
    assert cited(text) == {"3.2", "3.6", "4", "2", "3", "5", "6", "7", "10", "5.5", "9.3", "5.1", "9.21", "9.13"}


def test_every_spec_reference_in_the_code_names_a_heading_of_method_md():
    numbers, titles = headings()
    missing = []
    for path in sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(REPO)
        missing += [f"{rel}: spec {n}" for n in sorted(cited(text)) if n not in numbers]
        missing += [f'{rel}: spec "{t}"' for t in TITLE.findall(text) if t not in titles]
    assert not missing, f"spec references with no heading in docs/method.md: {missing}"


def test_the_code_cites_the_spec():  # the check above is not vacuous
    refs = set().union(*(cited(p.read_text(encoding="utf-8", errors="replace")) for p in sources()))
    assert {"1.3", "3.3", "5.4", "6.3", "9.19"} <= refs


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_doc_points_outside_the_repository(path):
    """No `../shared/...` pointer (in prose, code spans or links), and every relative link resolves to a file inside
    the repository."""
    text = path.read_text(encoding="utf-8")
    assert "../shared" not in text and "method-spec.md" not in text, f"{path.name} points at ../shared"
    from tests.helpers import links

    outside = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        dest = (path.parent / target.partition("#")[0]).resolve()
        if not dest.is_relative_to(REPO) or not dest.exists():
            outside.append(target)
    assert not outside, f"{path.relative_to(REPO)}: links outside the repository or to no file: {outside}"


def _shingles(text: str, n: int = 7) -> set[tuple[str, ...]]:
    """Runs of n words of the prose: code, quoted formats and table rows (facts: sizes, names) left out."""
    text = re.sub(r"```.*?```|`[^`]*`|«[^»]*»", " ", text, flags=re.S)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("|"))
    words = re.findall(r"[a-z]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


SPEC = REPO.parent / "shared" / "method-spec.md"


@pytest.mark.skipif(not SPEC.exists(), reason="the method reference (../shared) is not beside this checkout")
def test_method_md_is_written_in_the_projects_own_words():
    """Formats and facts, not sentences: no run of seven words of prose in common with the reference it follows."""
    common = _shingles(METHOD.read_text(encoding="utf-8")) & _shingles(SPEC.read_text(encoding="utf-8"))
    assert not common, sorted(" ".join(c) for c in common)[:20]
