"""What a fresh clone shows before anything runs, with an empty DVC cache (issue 33 item 1): the committed run's
plots page draws offline in a real browser, and metrics/report.md finds its pictures in git.

The clone is of this checkout as git would hand it out: its tracked and untracked-but-not-ignored files
(the reference run's metrics/ and dvc.lock included) committed to a scratch repository, then `git clone`d, so
nothing ignored (nothing DVC caches) comes along."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM, CHROMIUM_FLAGS, sh

REPO = Path(__file__).resolve().parents[1]


def _git_files() -> list[str]:
    return subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.splitlines()


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("origin") / "repo"
    for f in _git_files():
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    sh("git init -q && git add -A && git commit -qm snapshot", src)
    dst = tmp_path_factory.mktemp("clone") / "repo"
    sh(f"git clone -q {src} {dst}", dst.parent)
    assert not (dst / ".dvc" / "cache").exists()  # an empty cache: only what git holds
    return dst


def test_the_vega_bundle_the_page_loads_is_in_git():
    page = (REPO / ".dvc" / "plots.html").read_text(encoding="utf-8")
    (src,) = re.findall(r'<script src="\.\./([^"]+)"', page)
    assert src in _git_files(), f"{src} (which .dvc/plots.html loads) is not in git: a fresh clone's page is blank"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's)")
def test_fresh_clone_plots_page_draws_every_plot_offline(clone, tmp_path):
    sh("dvc plots show", clone)
    index = clone / "dvc_plots" / "index.html"
    plots = index.read_text(encoding="utf-8").count("vegaEmbed(")  # one call per plot
    assert plots >= 6
    out = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          index.as_uri()], capture_output=True, text=True, timeout=180)
    # each drawn chart is one <svg class="marks"> (vega-embed's menu icons are SVGs too, without the class)
    drawn = len(re.findall(r'<svg[^>]*class="marks"', out.stdout))
    assert drawn == plots, f"{drawn} of {plots} plots drawn in a fresh clone with an empty cache"


def test_fresh_clone_report_finds_its_pictures(clone):
    report = (clone / "metrics" / "report.md").read_text(encoding="utf-8")
    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", report)
    assert pictures, "metrics/report.md shows no pictures"
    for rel in pictures:
        png = clone / "metrics" / rel
        assert png.is_file(), f"metrics/report.md: {rel} is not in a fresh clone"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{rel} is not a PNG"
    readme = (clone / "README.md").read_text(encoding="utf-8")
    for rel in re.findall(r"!\[[^\]]*\]\((metrics/[^)\s]+)\)", readme):
        assert (clone / rel).is_file(), f"README.md: {rel} is not in a fresh clone"


NO_REMOTE = "No remote provided and no default remote set."  # DVC's line when a repository names no remote


def test_dvc_pull_without_a_remote_says_so(clone):
    """Git names no remote (the old default, ../tinythinker-dvc-storage, existed on no clone's machine): `dvc pull`
    exits 1 with DVC's line that no remote is set, not with ~45 hashes 'missing' from a directory that does not
    exist; and the docs name that line with the command that adds a remote."""
    import os

    out = subprocess.run("dvc pull", shell=True, cwd=clone, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 1
    assert NO_REMOTE in text, text[-2000:]
    assert "do not exist neither locally nor on remote" not in text, text[-2000:]
    guide = (REPO / "docs" / "experiments.md").read_text(encoding="utf-8")
    at = guide.find(NO_REMOTE)
    assert at >= 0 and "dvc remote add -d" in guide[at - 600:at + 600], \
        "docs/experiments.md: DVC's no-remote line and `dvc remote add -d` beside it"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "dvc remote add -d" in readme or "docs/experiments.md#sharing-data-and-checkpoints-through-a-remote" in readme
