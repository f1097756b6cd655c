"""End to end: the real `dvc repro` in a throwaway copy of the repository, on a shrunken embedded default."""
import csv
import html
import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import CHROMIUM, CHROMIUM_FLAGS, copy_repo, sh

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The shrunken pipeline, run once with `dvc repro` and shared by the tests of the `pipeline` xdist group
    (one worker runs them all, so the run is made once)."""
    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    sh("dvc repro", repo)
    return repo


# Tests that read the one shared run: kept on one xdist worker (`--dist loadgroup` in pyproject.toml).
shared_run = pytest.mark.xdist_group("pipeline")


@pytest.mark.slow
@shared_run
def test_dvc_repro_end_to_end(repo):
    for out in ["data/prepared/split_ids.json", "data/teacher/journal.jsonl", "data/sft/valid.jsonl",
                "models/sft/config.json", "models/dpo/iter2/config.json", "metrics/test/iter2.json"]:
        assert (repo / out).exists(), out
    rows = json.loads((repo / "metrics/iterations.json").read_text())
    assert [r["model"] for r in rows] == ["sft", "iter1", "iter2"]
    for key in ("iter1", "iter2"):  # dpo.control: false in the default: the stage only says so
        assert json.loads((repo / f"metrics/control/{key}.json").read_text()) == {"skipped": 1}
    assert "control_test_accuracy" not in rows[1]
    assert all(0.0 <= r["test_accuracy"] <= 100.0 for r in rows)
    # The headline is the only metrics file; stage diagnostics are git-tracked outputs, not metric columns.
    shown = json.loads(sh("dvc metrics show --json", repo))
    (workspace,) = shown.values()  # one revision, the workspace (DVC names it "" in the JSON)
    assert list(workspace["data"]) == ["metrics/summary.json"]
    header = next(csv.reader(io.StringIO(sh("dvc exp show --csv", repo))))
    for col in ("test.sft", "test.iter1", "test.iter2", "valid.sft", "pairs.iter1", "pairs.iter2", "steps.sft",
                "steps.iter2", "chains", "teacher.requests", "teacher.usd"):
        assert col in header, col
    for diag in ("accepted_chains", "rejected_length", "recall_pairs", "requests_from_journal", "usd_this_run",
                 "train_loss", "questions_with_pairs"):
        assert not any(h.split(".")[-1] == diag or h.endswith(":" + diag) for h in header), diag
    report = (repo / "metrics/report.md").read_text()
    assert "| iter2 |" in report and (repo / "metrics/report/accuracy.png").stat().st_size > 5_000
    # `dvc plots show` draws offline: its page loads the chart libraries from the checkout
    sh("dvc plots show", repo)
    page = (repo / "dvc_plots/index.html").read_text()
    assert '<script src="../metrics/vega/vega.js">' in page and "vegaEmbed(" in page
    assert '<meta charset="utf-8">' in page  # or a browser draws the axes' minus signs as mojibake
    assert (repo / "dvc_plots/../metrics/vega/vega.js").stat().st_size > 100_000

    # A second repro is a no-op that only checks hashes.
    t0 = time.monotonic()
    out = sh("dvc repro", repo)
    assert time.monotonic() - t0 < 30
    assert "didn't change" in out or "up to date" in out
    assert "Running stage" not in out


@pytest.mark.slow
@shared_run
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's)")
def test_the_plots_page_draws_in_a_real_browser(repo, tmp_path):
    """`dvc plots show`'s page in headless Chromium, offline: every plot drawn (as SVG), the accuracy plot's x axis
    the models by name, negative numbers with a real minus sign (no mojibake), and a screenshot with ink on it."""
    import re

    sh("dvc plots show", repo)
    page = (repo / "dvc_plots/index.html").as_uri()
    run = lambda *args: subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",  # noqa: E731
                                        *args, page], capture_output=True, text=True, timeout=180)
    dom = run("--dump-dom").stdout
    assert dom.count("<svg") >= 6, dom[:2000]  # accuracy, pretraining, SFT and DPO curves
    texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", dom)]
    assert {"sft", "iter1", "iter2"} <= set(texts)  # the iteration plot's x axis: models by name, not a step
    negative = [t for t in texts if re.fullmatch(r"\u2212\d[\d.,]*", t)]
    assert negative, "a DPO curve (log-probs) has negative ticks"
    assert not any("\u00e2" in t for t in texts)  # "â^'0.4": a page read as Latin-1
    shot = tmp_path / "page.png"
    run(f"--screenshot={shot}")
    assert shot.stat().st_size > 50_000  # a blank page of this size compresses to a few KB


@pytest.mark.slow
def test_dvc_repro_end_to_end_with_the_embedded_causal_student(tmp_path):
    """`student.model: embedded-causal`: the whole pipeline offline with a decoder-only student (TRL's SFTTrainer and
    DPOTrainer), one flag away from the T5 default."""
    repo = copy_repo(tmp_path / "causal", {"dpo.iterations": {"iter1": {"init": "models/sft"}}})  # one is enough
    sh("dvc exp run -S student.model=embedded-causal", repo)
    config = json.loads((repo / "models/dpo/iter1/config.json").read_text())
    assert config["model_type"] == "llama" and not config.get("is_encoder_decoder")
    rows = json.loads((repo / "metrics/iterations.json").read_text())
    assert [r["model"] for r in rows] == ["sft", "iter1"]
    assert all(0.0 <= r["test_accuracy"] <= 100.0 for r in rows)
    for it in ("iter1",):
        m = json.loads((repo / f"metrics/dpo/{it}.json").read_text())
        assert m.get("skipped") or {"rewards/margins", "logps/chosen"} <= set(m)
    assert "pipeline_tag: text-generation" in (repo / "models/final/README.md").read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    """A local S3-compatible server (moto) on 127.0.0.1, with one bucket."""
    pytest.importorskip("dvc_s3", reason="S3 remote support is installed by the [test] extra")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(creds)
    try:
        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=url).create_bucket(Bucket="tinythinker")
                break
            except Exception:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k in creds:
            os.environ.pop(k, None)


@pytest.mark.slow
@shared_run
@pytest.mark.parametrize("remote", ["local", "s3"])
def test_push_then_pull_into_fresh_clone(repo, tmp_path, remote, request):
    """Data, teacher journal and checkpoints travel through a remote; the fresh clone is up to date."""
    sh("git add -A && git commit -qm 'pipeline run' || true", repo)
    if remote == "local":
        add = f"dvc remote add -f store {tmp_path / 'store'}"
    else:
        url = request.getfixturevalue("s3_server")
        add = f"dvc remote add -f store s3://tinythinker/cache && dvc remote modify store endpointurl {url}"
    sh(add + " && dvc push -r store", repo)
    clone = tmp_path / "clone"
    sh(f"git clone -q {repo} {clone}", tmp_path)
    sh(add.replace(str(tmp_path / "store"), str(tmp_path / "store")) + " && dvc pull -r store", clone)
    assert (clone / "models/dpo/iter2/config.json").exists()
    assert (clone / "data/teacher/journal.jsonl").read_bytes() == (repo / "data/teacher/journal.jsonl").read_bytes()
    status = sh("dvc status", clone)
    assert "up to date" in status, status
    assert "Running stage" not in sh("dvc repro", clone)


def _lock_outs(repo: Path) -> dict[str, str]:
    """Output path -> content hash, for every stage output recorded in dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}


def _metrics(repo: Path) -> dict[str, dict]:
    return {p.relative_to(repo).as_posix(): json.loads(p.read_text()) for p in sorted((repo / "metrics").rglob("*.json"))
            if "_live" not in p.as_posix()}


@pytest.mark.slow
@shared_run
def test_same_params_same_machine_reproduce_exactly(repo, tmp_path):
    """A second clone run from scratch: identical hashes for data, teacher outputs and models; same metrics."""
    other = copy_repo(tmp_path / "again")
    # Through the first DPO iteration and the SFT model's test (each later stage repeats one of these kinds)
    sh("dvc repro dpo_train@iter1 test_sft", other)
    first, second = _lock_outs(repo), _lock_outs(other)
    assert {"models/sft", "models/dpo/iter1", "data/predictions/test/sft.jsonl"} <= set(second) <= set(first)
    for path in ("data/raw", "data/prepared", "data/teacher/requests.jsonl", "data/teacher/journal.jsonl",
                 "data/teacher/completions.jsonl", "data/sft", "data/dpo/iter1", "models/tokenizer"):
        assert first[path] == second[path], path
    assert {p: first[p] for p in second} == second  # trained models too: CPU training here is deterministic
    ran = _metrics(other)
    assert ran and {k: v for k, v in _metrics(repo).items() if k in ran} == ran


@pytest.mark.slow
def test_training_stages_under_accelerate_with_two_cpu_processes(tmp_path):
    """`launcher` switches sft and dpo_train to `accelerate launch` (DDP over 2 CPU processes), no code change."""
    clone = copy_repo(tmp_path / "ddp", {"dpo.iterations": {"iter1": {"init": "models/sft"}}})  # one is enough
    out = sh("dvc exp run -S \"launcher='accelerate launch --multi_gpu --num_processes 2 -m'\"", clone)
    for stage in ("sft", "dpo-sample iter1", "dpo-train iter1", "test --model models/dpo/iter1"):
        assert f"accelerate launch --multi_gpu --num_processes 2 -m tinythinker {stage}" in out, stage
    sft = json.loads((clone / "metrics/sft.json").read_text())
    assert sft["processes"] == 2 and 0.0 <= sft["valid_accuracy"] <= 100.0
    assert (clone / "models/dpo/iter1/model.safetensors").exists()
    assert json.loads((clone / "metrics/dpo/iter1.json").read_text())["steps"] >= 0


@pytest.mark.slow
@shared_run
def test_queued_ablation_runs_and_shows(repo):
    """`dvc exp run --queue` + `dvc queue start`: a queued variant runs and is compared."""
    sh("git add -A && git commit -qm 'pipeline run' || true", repo)
    # A phase-2 variant: the queued run takes the SFT model from the cache and reruns the DPO stages only
    sh("dvc exp run --queue -n beta-low -S dpo.beta=0.1", repo)
    sh("dvc queue start -j 1", repo)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = sh("dvc queue status", repo)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Success" in status, status
    import dvc.api

    rows = {r["Experiment"]: r for r in dvc.api.exp_show(repo=str(repo))}
    ablation = rows["beta-low"]
    assert ablation["dpo.beta"] == 0.1
    accuracies = {k: v for k, v in ablation.items() if k.startswith("test.") and isinstance(v, (int, float))}
    assert set(accuracies) == {"test.sft", "test.iter1", "test.iter2"}, ablation
    assert "beta-low" in sh("dvc exp show --csv", repo)


CSQA = REPO.parent / "shared" / "datasets" / "csqa"


@pytest.mark.slow
@pytest.mark.skipif(not (CSQA / "train_rand_split.jsonl").exists(), reason="the official CSQA files (../shared)")
def test_csqa_slice_through_every_stage_with_a_local_openai_compatible_teacher(tmp_path):
    """The real-data path end to end: official CSQA files capped by dataset.limit, the OpenAI client against
    a chat-completions server on 127.0.0.1, then every stage of dvc.yaml."""
    from tests.teacher.fakes import Teacher

    teacher = Teacher()
    try:
        repo = copy_repo(tmp_path / "csqa", {
            "dataset.name": "csqa", "dataset.source": str(CSQA), "dataset.limit": 20,
            "teacher.backend": "openai", "teacher.base_url": teacher.url, "teacher.samples": 2,
            "dpo.iterations": {"iter1": {"init": "models/sft"}}})
        sh("dvc repro", repo, OPENAI_API_KEY="local-server")
    finally:
        teacher.close()
    ids = json.loads((repo / "data/prepared/split_ids.json").read_text())
    assert [len(ids[s]) for s in ("train", "valid", "test")] == [20, 20, 20]
    request = json.loads((repo / "metrics/teacher_request.json").read_text())
    assert request["questions"] == 20 and request["requests_sent"] >= 20 and request["questions_covered"] == 20
    assert len(teacher.answered()) == request["requests_sent"]
    options = {len(json.loads(l)["options"]) for l in (repo / "data/sft/test.jsonl").read_text().splitlines()}
    assert options == {5}  # CSQA's five options reach the chain
    rows = json.loads((repo / "metrics/iterations.json").read_text())
    assert [r["model"] for r in rows] == ["sft", "iter1"]
    assert json.loads((repo / "metrics/test/iter1.json").read_text())["questions"] == 20
