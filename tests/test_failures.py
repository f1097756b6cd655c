"""Every expected failure of issue 11 ends in one red line naming the key, file, line or path, exit code 2,
and leaves no partial output: silent wrong configuration, writes outside the repository, and tracebacks."""
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinythinker.cli import app
from tinythinker.data import synthetic
from tinythinker.io import read_jsonl, write_jsonl
from tinythinker.paths import Paths

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PARAMS_TEXT = re.sub(r"(?m)^(    num_train:) \d+", r"\1 24", (REPO / "params.yaml").read_text()).replace(
    "num_valid: 150", "num_valid: 6").replace("num_test: 300", "num_test: 6")


def write_params(root: Path, *edits: tuple[str, str]) -> None:
    text = PARAMS_TEXT
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (root / "params.yaml").write_text(text)


def cli(root: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--root", str(root)])


def fails(res, *needles: str) -> str:
    """The one line a failed command printed; exit code 2, no traceback, every needle in it."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def files_under(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()} if d.exists() else {}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A small synthetic repository up to the teacher: params, data/raw, data/prepared, data/corpus, completions."""
    root = tmp_path_factory.mktemp("repo")
    write_params(root)
    for cmd in ("download", "prepare", "corpus"):
        res = cli(root, cmd)
        assert res.exit_code == 0, res.output
    paths = Paths(root)
    rng = random.Random(0)
    write_jsonl(paths.completions, [
        {"id": r["id"], "gt": r["answer"], "options": [c["label"] for c in r["choices"]], "user": "u",
         "completions": [dict(zip(("content", "finish_reason"), synthetic.offline_completion(r, rng)))
                         for _ in range(2)], "rounds": 1}
        for r in read_jsonl(paths.split("train"))])
    return root


@pytest.fixture
def repo(prepared, tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(prepared, root)
    return root


# --- silent wrong configuration -------------------------------------------------------------------------------
def test_leading_zero_seed_is_the_value_dvc_params_diff_shows(tmp_path):
    """`seed: 010`: DVC records 10 (YAML 1.2), and so does every stage (PyYAML would have trained with 8)."""
    from tinythinker.params import load

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    run = lambda *a: subprocess.run(a, cwd=tmp_path, env=env, check=True, capture_output=True, text=True)  # noqa
    write_params(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: 'true'\n    params: [seed]\n")
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "init")
    write_params(tmp_path, ("\nseed: 42\n", "\nseed: 010\n"))
    diff = json.loads(run(sys.executable, "-m", "dvc", "params", "diff", "--json").stdout)
    assert diff["params.yaml"]["seed"] == {"old": 42, "new": 10, "diff": -32}
    assert load(tmp_path / "params.yaml").seed == 10


@pytest.mark.parametrize("edit,needle", [
    (("  repeat_n: false", "  repeat_n: yes"), "teacher.repeat_n: expected true/false, got 'yes'"),
    (("  max_concurrency: 64\n", "  max_concurrency: 0\n"), "teacher.max_concurrency: must be >= 1, got 0"),
    (("  max_concurrency: 64\n", ""), "teacher.max_concurrency: missing key"),
    (("  beta: 0.5", "  beta: .inf"), "dpo.beta: must be a finite number, got inf"),
    (("  top_p: 1.0\n  times", "  top_p: 0\n  times"), "generation.top_p: must be in (0, 1], got 0"),
    (("    d_model: 128", "    d_model: -1"), "student.embedded.d_model: must be >= 1, got -1"),
    (("  max_source_length: 512", "  max_source_length: 0"), "sft.max_source_length: must be >= 1, got 0"),
])
def test_bad_params_fail_before_the_stage_starts(tmp_path, edit, needle):
    """`request` with max_concurrency 0 used to wait forever; every stage now refuses on load."""
    write_params(tmp_path, edit)
    fails(cli(tmp_path, "request"), "params.yaml: " + needle)


def test_empty_params_file_names_the_first_missing_key(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    fails(cli(tmp_path, "prepare"), "params.yaml: seed: missing key")


# --- writes outside the repository ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../x", "/tmp/tinythinker-escaped", "test/../../x", "a//b"])
def test_test_name_cannot_leave_the_repository(repo, name):
    before = set(repo.parent.parent.rglob("*"))
    line = fails(cli(repo, "test", "--model", str(repo / "models" / "none"), "--name", name), f"--name: {name!r}")
    assert "no '..', no absolute path" in line
    assert set(repo.parent.parent.rglob("*")) == before and not Path("/tmp/tinythinker-escaped.json").exists()


@pytest.mark.parametrize("key", ["../../../escaped", "/tmp/tinythinker-escaped"])
def test_iteration_keys_cannot_leave_the_repository(repo, key):
    write_params(repo, ("    iter2:\n", f"    {json.dumps(key)}:\n"))
    before = set(repo.parent.parent.rglob("*"))
    for cmd in (["report"], ["dpo-sample", key], ["dpo-train", key], ["sft"]):
        fails(cli(repo, *cmd), f"dpo.iterations.{key}: {key!r} is not a plain name")
    assert set(repo.parent.parent.rglob("*")) == before and not Path("/tmp/tinythinker-escaped").exists()


# --- tracebacks: models ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    from tinythinker.lm.model import train_tokenizer

    tok = train_tokenizer(["Which is a metal? (A) wood (B) iron", "So the answer is option B."] * 5, 60)
    cfg = T5Config(vocab_size=len(tok), d_model=8, d_ff=8, d_kv=4, num_heads=1, num_layers=1, num_decoder_layers=1,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0)
    d = tmp_path_factory.mktemp("model") / "m"
    T5ForConditionalGeneration(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("damage,needle", [
    (None, "no such model directory (--model)"),
    (lambda d: (d / "config.json").unlink(), "not a complete checkpoint (--model): no config.json"),
    (lambda d: (d / "tokenizer.json").unlink(), "not a complete checkpoint (--model): no tokenizer.json or spiece.model"),
    (lambda d: (d / "config.json").write_text("{not json"), "cannot load (--model): OSError: It looks like the config"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\0" * 10), "cannot load (--model): SafetensorError: "),
    (lambda d: (d / "model.safetensors").unlink(), "cannot load (--model): OSError: Error no file named model.safetensors"),
    (lambda d: (d / "tokenizer.json").write_bytes(b"\xff{}"), "cannot load (--model): UnicodeDecodeError: "),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "cannot load (--model): KeyError: 'added_tokens'"),
])
def test_broken_or_missing_model_directory(repo, tiny_model, damage, needle):
    assert cli(repo, "build").exit_code == 0
    model = repo / "models" / "broken"
    if damage is not None:
        shutil.copytree(tiny_model, model)
        damage(model)
    fails(cli(repo, "test", "--model", str(model), "--name", "broken"), f"{model}: {needle}")
    assert not (repo / "metrics" / "broken.json").exists()


@pytest.mark.parametrize("damage,needle", [
    (lambda w: (w.unlink(), w.symlink_to(w.parent / "gone" / "cache-file")), "a link to {w}/../gone/cache-file"),
    (lambda w: (w.unlink(), w.mkdir()), "a directory, not a weights file (--model)"),
    (lambda w: w.write_bytes(w.read_bytes()[:1000]), "not a complete safetensors file (1000 bytes; --model)"),
    (lambda w: w.write_bytes(b""), "not a complete safetensors file (0 bytes; --model)"),
])
def test_unreadable_weights_are_said_as_what_they_are(repo, tiny_model, damage, needle):
    """Not the loader's "no file named model.safetensors" for weights that are there but cannot be read."""
    assert cli(repo, "build").exit_code == 0
    model = repo / "models" / "broken"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    damage(weights)
    needle = needle.replace("{w}/..", str(model))
    fails(cli(repo, "test", "--model", str(model), "--name", "broken"), f"{weights}: {needle}")


def test_nonexistent_model_in_a_real_process(repo):
    """The issue's exact command, as a user types it: one line on stderr, exit 2, no traceback."""
    assert cli(repo, "build").exit_code == 0
    res = subprocess.run([sys.executable, "-m", "tinythinker", "test", "--model", "/nonexistent", "--root", str(repo)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "error: /nonexistent: no such model directory (--model)"


@pytest.mark.parametrize("cmd", ["dpo-sample", "dpo-train"])
def test_an_unreadable_model_directory_is_not_reported_missing(repo, tiny_model, tmp_path, cmd):
    assert cli(repo, "build").exit_code == 0
    locked = tmp_path / "locked"
    shutil.copytree(tiny_model, locked)
    write_params(repo, ("      init: models/sft", f"      init: {locked}"))
    res = _run_locked(locked, 0o000, cmd, "iter1", "--root", str(repo))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"error: {locked}: Permission denied"
    shutil.rmtree(locked)
    fails(cli(repo, cmd, "iter1"), f"{locked}: no such model directory (dpo.iterations.iter1.init)")


# --- tracebacks: input files ----------------------------------------------------------------------------------
def put_byte(path: Path, line: int, byte: bytes = b"\xff") -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1][:10] + byte + lines[line - 1][10:]
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize("rel,line,cmd", [
    ("data/raw/train.jsonl", 3, "prepare"),
    ("data/prepared/train.jsonl", 5, "prompt"),
    ("data/teacher/completions.jsonl", 2, "build"),
    ("params.yaml", 12, "report"),
])
def test_a_byte_that_is_not_utf8_is_named_by_file_and_line(repo, rel, line, cmd):
    put_byte(repo / rel, line)
    fails(cli(repo, cmd), f"{repo / rel}:{line}: not UTF-8 (byte 0xff)")


def test_a_byte_that_is_not_utf8_in_a_stage_file_and_in_exemplars(repo):
    assert cli(repo, "build").exit_code == 0
    stage = repo / "data" / "sft" / "recall_analyze_summarize" / "analyze.jsonl"
    put_byte(stage, 4, b"\xc3\x28")
    fails(cli(repo, "tokenizer"), f"{stage}:4: not UTF-8 (byte 0xc3)")
    ex = repo / "ex.json"
    ex.write_bytes(b'[\n  {"Q": "caf\xe9"}\n]\n')  # Latin-1
    write_params(repo, ("  exemplars: null", f"  exemplars: {ex}"))
    fails(cli(repo, "prompt"), f"{ex}:2: not UTF-8 (byte 0xe9)")


@pytest.mark.parametrize("rel,field,cmd", [
    ("data/sft/recall_analyze_summarize/recall.jsonl", "target", "tokenizer"),
    ("data/sft/valid.jsonl", "block", "tokenizer"),
    ("data/sft/train_questions.jsonl", "options", None),
    ("data/teacher/completions.jsonl", "completions", "build"),
    ("data/prepared/train.jsonl", "choices", "prompt"),
])
def test_a_missing_field_is_named_by_file_line_and_field(repo, rel, field, cmd):
    if not rel.startswith(("data/teacher", "data/prepared")):
        assert cli(repo, "build").exit_code == 0
    path = repo / rel
    rows = read_jsonl(path)
    del rows[1][field]
    write_jsonl(path, rows)
    if cmd is None:  # dpo-sample reads it after the model: check the reader directly
        from tinythinker.io import DataError
        from tinythinker.protocol import QUESTION_FIELDS
        with pytest.raises(DataError, match=re.escape(f"{path}:2: missing field '{field}'")):
            read_jsonl(path, QUESTION_FIELDS)
        return
    needle = f"{path}:2: missing field '{field}'" if rel != "data/prepared/train.jsonl" else f"{path}:2: missing field"
    fails(cli(repo, cmd), needle)


# --- bad prepared data is refused at prepare, and again before the teacher is paid ---------------------------
def edit_rows(path: Path, fn) -> None:
    rows = read_jsonl(path)
    fn(rows)
    write_jsonl(path, rows)


@pytest.mark.parametrize("edit,needle", [
    (lambda rows: rows[2].update(answer="Z"), ":3: answer 'Z' is not among the choice labels ['A', 'B', 'C', 'D']"),
    (lambda rows: rows[3].update(id=rows[1]["id"]), ":4: duplicate id 'syn-train-00001' (first at "),
    (lambda rows: rows[0]["choices"][1].update(text="  "), ":1: choice B text must be a non-empty string"),
    (lambda rows: rows[4].update(question=""), ":5: question must be a non-empty string"),
])
def test_bad_records_are_refused_at_prepare_and_before_the_teacher(repo, edit, needle):
    raw, prepared = repo / "data" / "raw" / "train.jsonl", repo / "data" / "prepared" / "train.jsonl"
    before = files_under(repo / "data" / "prepared")
    edit_rows(raw, edit)
    fails(cli(repo, "prepare"), f"{raw}{needle}")
    assert files_under(repo / "data" / "prepared") == before  # the earlier splits stay whole
    edit_rows(prepared, edit)  # edited by hand after prepare: the prompt stage re-checks it
    fails(cli(repo, "prompt"), f"{prepared}{needle}")
    assert not (repo / "data" / "teacher" / "requests.jsonl").exists()


def test_an_empty_split_is_refused_at_prepare(repo):
    (repo / "data" / "raw" / "valid.jsonl").write_text("")
    fails(cli(repo, "prepare"), "the valid split of synthetic would be empty")


# --- tracebacks: the system refuses ---------------------------------------------------------------------------
def _as_user(cmd: list[str]) -> list[str]:
    """Root ignores file modes; without CAP_DAC_OVERRIDE it is held to them like any user."""
    if os.geteuid() != 0:
        return cmd
    assert shutil.which("setpriv"), "root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE for this test"
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]


def _run_locked(locked: Path, mode: int, *args: str) -> subprocess.CompletedProcess:
    """`python -m tinythinker *args` as a user held to file modes, `locked` at `mode` meanwhile (then 0o755)."""
    locked.chmod(mode)
    try:
        return subprocess.run(_as_user([sys.executable, "-m", "tinythinker", *args]), capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    finally:
        locked.chmod(0o755)


def test_permission_denied_is_one_line_naming_the_path(repo):
    data = repo / "data"
    before = files_under(data)
    res = _run_locked(data, 0o555, "prepare", "--root", str(repo))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"error: {data / 'prepared'}: Permission denied"
    assert files_under(data) == before


def test_a_directory_output_that_cannot_be_moved_is_named_and_kept_whole(repo):
    """data/sft read-only: the swap cannot move it aside. One line naming data/sft (not the temporary), and the
    previous build whole, no temporary left."""
    assert cli(repo, "build").exit_code == 0
    sft = repo / "data" / "sft"
    before = files_under(sft)
    res = _run_locked(sft, 0o555, "build", "--root", str(repo))
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == f"error: {sft}: Permission denied"
    assert files_under(sft) == before
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["corpus", "prepared", "raw", "sft", "teacher"]


def test_a_full_disk_is_one_line_naming_the_output(repo):
    """The kernel refuses a write past RLIMIT_FSIZE as it refuses one on a full disk: an OSError with no file
    name, raised from inside a write; the stage must still name its output and leave nothing half-written."""
    shutil.rmtree(repo / "data" / "prepared")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    res = subprocess.run([sys.executable, "-m", "tinythinker", "prepare", "--root", str(repo)], preexec_fn=limit,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC), "PYTHONDONTWRITEBYTECODE": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"error: {repo / 'data' / 'prepared'}: File too large"
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["corpus", "raw", "teacher"]  # no partial output, no temporary


# --- a killed build -------------------------------------------------------------------------------------------
KILL_AFTER = """
import os, signal, sys
import tinythinker.teacher.build as b
calls, real = [0], b.write_jsonl
def write_jsonl(path, rows):
    calls[0] += 1
    if calls[0] > int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, rows)
b.write_jsonl = write_jsonl
from tinythinker.cli import app
app(["build", "--root", sys.argv[1]])
"""


@pytest.mark.parametrize("after", [1, 6])
def test_a_killed_build_leaves_no_partial_files_in_data_sft(repo, after):
    sft = repo / "data" / "sft"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    kill = lambda: subprocess.run([sys.executable, "-c", KILL_AFTER, str(repo), str(after)], env=env)  # noqa: E731
    assert kill().returncode == -signal.SIGKILL
    assert not sft.exists()  # first build killed: no data/sft at all

    assert cli(repo, "build").exit_code == 0
    done = files_under(sft)
    assert len(done) == 13  # 8 stage files, recall_single, chains, train_questions, valid, test
    edit_rows(repo / "data" / "teacher" / "completions.jsonl", lambda rows: rows.pop(0))  # a different build
    assert kill().returncode == -signal.SIGKILL
    assert files_under(sft) == done  # the previous build, whole
    assert cli(repo, "build").exit_code == 0
    assert files_under(sft) != done and len(files_under(sft)) == 13
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["corpus", "prepared", "raw", "sft", "teacher"]


# --- a directory output is swapped whole: a failure or a kill at any moment leaves the old one or the new one --
SWAP_KILLED = """
import os, signal, sys
from pathlib import Path
import tinythinker.io as io
real, calls = os.replace, [0]
def replace(src, dst):
    real(src, dst)
    calls[0] += 1
    if calls[0] == 1:  # the old directory is aside, the new one not yet in
        os.kill(os.getpid(), signal.SIGKILL)
io.os.replace = replace
with io.atomic_path(Path(sys.argv[1])) as tmp:
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
"""


def test_a_directory_swap_killed_between_its_renames_is_put_back(tmp_path):
    out = tmp_path / "data" / "sft"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("old")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", SWAP_KILLED, str(out)], env=env)
    assert done.returncode == -signal.SIGKILL and not out.exists()  # the kill fell between the renames
    stranded = [p.name for p in out.parent.iterdir()]
    assert len(stranded) == 1 and stranded[0].startswith(".sft.tmp-")
    assert subprocess.run(["git", "check-ignore", "-q", f"data/{stranded[0]}/old/old.txt"], cwd=REPO).returncode == 0

    from tinythinker.io import atomic_path

    with pytest.raises(RuntimeError), atomic_path(out) as tmp:  # the next write of it fails: the old one is back
        tmp.mkdir()
        raise RuntimeError("a failing build")
    assert files_under(out) == {"old.txt": b"old"} and [p.name for p in out.parent.iterdir()] == ["sft"]


def test_a_directory_that_cannot_be_moved_in_leaves_the_old_one(tmp_path, monkeypatch):
    import tinythinker.io as io

    out = tmp_path / "sft"
    out.mkdir()
    (out / "a.txt").write_text("old")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # moving the new directory in
            raise PermissionError(13, "Permission denied", str(dst))
        real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(PermissionError) as e, io.atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("new")
    assert e.value.filename == str(out)  # named by the output, not the temporary
    assert files_under(out) == {"a.txt": b"old"} and [p.name for p in tmp_path.iterdir()] == ["sft"]


# --- no silent empty input, and stage files checked as prepare checks a split ---------------------------------
@pytest.mark.parametrize("split,cmd", [("train", "prompt"), ("valid", "build"), ("test", "build")])
def test_an_empty_prepared_split_stops_the_first_stage_that_reads_it(repo, split, cmd):
    path = repo / "data" / "prepared" / f"{split}.jsonl"
    path.write_text("")
    fails(cli(repo, cmd), f"{path}: no questions (an empty {split} split")


def test_an_empty_request_file_stops_the_request_stage(repo):
    assert cli(repo, "prompt").exit_code == 0
    path = repo / "data" / "teacher" / "requests.jsonl"
    path.write_text("")
    fails(cli(repo, "request"), f"{path}: no requests (an empty training split?)")
    assert not (repo / "metrics" / "teacher_request.json").exists()


@pytest.mark.parametrize("edit,needle", [
    (lambda rows: rows.clear(), ": no questions (an empty split"),
    (lambda rows: rows[2].update(gt="Z"), ":3: answer 'Z' is not one of the options ['A', 'B', 'C', 'D']"),
    (lambda rows: rows[3].update(qid=rows[0]["qid"]), ":4: duplicate qid 'syn-test-"),
    (lambda rows: rows[1].update(options=["A", "A"]), ":2: options must be distinct capital letters"),
    (lambda rows: rows[0].update(block=7), ":1: field 'block' must be a JSON string, not 7"),
])
def test_a_bad_question_file_stops_the_stage_that_reads_it(repo, tiny_model, edit, needle):
    assert cli(repo, "build").exit_code == 0
    path = repo / "data" / "sft" / "test.jsonl"
    edit_rows(path, edit)
    fails(cli(repo, "test", "--model", str(tiny_model), "--name", "test/x"), f"{path}{needle}")
    assert not (repo / "metrics" / "test").exists()


@pytest.mark.parametrize("edit,needle", [
    (lambda rows: rows.append(dict(rows[1])), ": duplicate id 'syn-train-"),
    (lambda rows: rows[1].update(completions="text"), ":2: field 'completions' must be a JSON array, not \"text\""),
    (lambda rows: rows[1].update(completions=["text"]), ":2: every completion must be an object with a string"),
])
def test_a_bad_completions_file_stops_build(repo, edit, needle):
    path = repo / "data" / "teacher" / "completions.jsonl"
    edit_rows(path, edit)
    fails(cli(repo, "build"), f"{path}")
    fails(cli(repo, "build"), needle)
    assert not (repo / "data" / "sft").exists()
