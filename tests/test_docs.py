"""README.md is the front door (at most 200 lines) and links every docs/ page; links between the pages resolve;
every `-S key=value` / `--set-param key=value` in them names a real key of params.yaml."""
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.helpers import links, prose

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = ["method", "embedded-task", "experiments", "paper", "teacher", "decoder-only", "scale-out", "performance",
         "architecture"]


def markdown_files():
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def anchors(path):
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen, out = {}, set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"),
                                                                       flags=re.S | re.M), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES)
def test_docs_page_exists_and_readme_links_it(page):
    assert (REPO / "docs" / f"{page}.md").is_file()
    targets = {target.split("#")[0] for target in links(README)}
    assert f"docs/{page}.md" in targets, f"README.md does not link docs/{page}.md"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    broken = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    assert not broken, f"{path.relative_to(REPO)}: broken links: {broken}"


# `-S key=value`, `-S 'key=value'`, `-S "key='value'"`, `--set-param=key=value`, `-S '++key=value'` (DVC's
# Hydra-style "add or override" prefixes ++, +, ~)
SET_PARAM = re.compile(r"(?<![\w-])(?:-S|--set-param)(?:\s+|=)([\"']?)(\+\+|\+|~)?([A-Za-z_][\w.-]*)=")
PARAMS = YAML(typ="safe").load((REPO / "params.yaml").read_text(encoding="utf-8"))


def flags(text):
    """(line number, prefix, dotted key) of every set-param flag in a markdown text."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(2) or "", m.group(3)) for m in SET_PARAM.finditer(text)]


def key_exists(prefix, key, tree=PARAMS):
    """The dotted key walks mappings of params.yaml to its end. With `++` or `+` (add), a missing key may be
    added under an existing mapping when a sibling has the rest of the path (iter4.init beside iter3.init)."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        if prefix in ("++", "+") and isinstance(node, dict) and node:
            rest = ".".join(parts[i + 1:])
            return not rest or any(isinstance(sibling, dict) and key_exists("", rest, sibling)
                                   for sibling in node.values())
        return False
    return True


def test_set_param_regex_catches_the_quoting_forms():
    text = ("dvc exp run -S dataset.name=csqa -S 'teacher.model=gpt-4o'\n"
            "dvc exp run -S \"launcher='accelerate launch -m'\" --set-param sft.tf32=true\n"
            "`-S '++dpo.iterations.iter4.init=models/dpo/iter3'` and a wrapped `-S teacher.base_url=\nhttp://x`\n"
            "prose: the `-S` flags of a preset; `--set-param` too; -Sfoo=1 x-S bar=2")
    assert [(p, k) for _, p, k in flags(text)] == [
        ("", "dataset.name"), ("", "teacher.model"), ("", "launcher"), ("", "sft.tf32"),
        ("++", "dpo.iterations.iter4.init"), ("", "teacher.base_url")]
    assert key_exists("++", "dpo.iterations.iter4.init")
    assert not key_exists("", "dpo.iterations.iter4.init")
    assert not key_exists("++", "dpo.iterations.iter4.nit")
    assert not key_exists("", "teacher.modle")
    assert key_exists("", "dataset.synthetic")  # a whole mapping, which exists


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_set_param_keys_exist(path):
    found = flags(path.read_text(encoding="utf-8"))
    unknown = [f"line {line}: {prefix}{key}" for line, prefix, key in found if not key_exists(prefix, key)]
    assert not unknown, f"{path.relative_to(REPO)}: -S keys not in params.yaml: {unknown}"


COMMAND = re.compile(r"(?<![\w/.-])tinythinker ((?:[a-z][\w-]*|--?[\w-]+)(?: (?:--?[\w-]+|[a-z0-9][\w./-]*))*)")


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_tinythinker_commands_in_the_docs_parse(path):
    """Every `tinythinker <command> [--option ...]` written in README/docs names a real command and real options:
    typer's parser accepts it (`--help` appended, so nothing runs)."""
    from typer.main import get_command

    from tinythinker.cli import app

    cli = get_command(app)
    bad = []
    for m in COMMAND.finditer(path.read_text(encoding="utf-8")):
        words = m.group(1).split()
        if words[0].startswith("-"):  # tinythinker --help / --version
            if words[0] not in ("--help", "--version"):
                bad.append(m.group(0))
            continue
        sub = cli.commands.get(words[0])
        if sub is not None and hasattr(sub, "commands"):  # a group (tinythinker seeds queue): its subcommand
            if len(words) == 1:
                continue
            sub, words = sub.commands.get(words[1]), words[1:]
        if sub is None:
            bad.append(m.group(0))
            continue
        known = {o for p in sub.params for o in getattr(p, "opts", [])}
        bad += [f"{m.group(0)} ({w})" for w in words[1:] if w.startswith("--") and w not in known]
    assert not bad, f"{path.relative_to(REPO)}: commands that do not parse: {bad}"


def _leaves(tree, prefix=""):
    """The dotted column names DVC shows for a metrics file: one per leaf."""
    if isinstance(tree, dict):
        return [c for k, v in tree.items() for c in _leaves(v, f"{prefix}{k}.")]
    return [prefix[:-1]]


def test_experiments_md_counts_the_headline_columns_the_committed_run_has():
    """docs/experiments.md's "(N columns for the default run)" is the number of columns `dvc metrics show` prints for
    the committed metrics/summary.json, and every column family is named there."""
    import json

    text = (REPO / "docs" / "experiments.md").read_text(encoding="utf-8")
    stated = [int(n) for n in re.findall(r"\((\d+) columns for the default run\)", text)]
    summary = json.loads((REPO / "metrics" / "summary.json").read_text(encoding="utf-8"))
    columns = _leaves(summary)
    assert stated == [len(columns)], f"docs/experiments.md states {stated}; metrics/summary.json has {len(columns)}"
    section = text.split("**`metrics/summary.json`**", 1)[1].split("\n- ", 1)[0]
    for family in summary:
        assert f"`{family}." in section or f"`{family}`" in section, f"{family}.* columns not named"


def _section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def test_readme_keeps_two_setup_commands_and_no_lab_notes():
    """README states the results; what changes with every commit (commit hashes, test counts, timings) lives in docs/
    and DEVELOPERS.md. Its quick start is exactly two commands."""
    text = README.read_text(encoding="utf-8")
    quick = _section(text, "## Quick start")
    (block,) = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2, commands
    body = prose(text)
    hashes = [h for h in re.findall(r"\b[0-9a-f]{7,40}\b", body) if re.search(r"\d", h) and re.search(r"[a-f]", h)]
    assert not hashes, f"commit hashes in README.md: {hashes}"
    assert not re.findall(r"\b\d[\d,]* tests\b", body), "test counts in README.md"
    timings = re.findall(r"\b\d+ min(?: \d+ s)?\b|\b\d+ s\b|~\d+ min", body)
    assert not timings, f"timings in README.md: {timings}"


def test_experiments_md_says_sequential_runs_stack_and_how_to_run_them_independently():
    """`dvc exp run -S a` then `dvc exp run -S b` runs b on top of a (the workspace keeps the last experiment); the
    ablation docs say so and show the two ways to independent runs (committed params back, or a queue)."""
    text = (REPO / "docs" / "experiments.md").read_text(encoding="utf-8")
    section = _section(text, "## Experiments")
    assert "on top of" in section and "git checkout params.yaml" in section and "dvc exp run --queue" in section
    assert section.index("on top of") < section.index("The ablation grid")
    readme = README.read_text(encoding="utf-8")
    assert "stack" in _section(readme, "## One-flag switches")
