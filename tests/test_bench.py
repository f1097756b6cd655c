"""The benchmark script keeps working: a quick run of every benchmark writes a well-formed report.

Only shape and sanity are asserted here (timings belong to bench/, not to tests)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_writes_its_report(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--train-steps", "5",
                          "--only", "chain,sampling,train,teacher,overhead", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    chain = {r["variant"]: r for r in report["chain"]}
    loop = chain["per-question loop"]
    assert loop["vs_loop"] == 1.0 and loop["sequences"] == 8 * 6  # recall + 4 options + summarize per question
    assert all(r["sequences"] == loop["sequences"] and r["seq_per_s"] > 0 for r in chain.values())
    original = [r for r in report["chain"] if r["variant"].startswith("original: Trainer.predict")]
    assert len(original) == 2 and {r["vs_original"] for r in original} >= {1.0}
    sampling = report["sampling"]
    assert len(sampling) == 4 and all(r["seq_per_s"] > 0 for r in sampling)
    # the same logical work on both sides of each pair: the ratio is a ratio of times
    assert sampling[0]["sequences"] == sampling[1]["sequences"] and sampling[1]["vs_every_copy"] > 0
    train = {(r["benchmark"], r["variant"]): r for r in report["train"]}
    assert set(train) == {("sft", "stock"), ("sft", "stock, length-grouped"), ("sft", "ours"), ("dpo", "stock"),
                          ("dpo", "ours")}
    assert train["sft", "stock, length-grouped"]["vs_stock"] == 1.0 and train["dpo", "stock"]["vs_stock"] == 1.0
    # length grouping, the stock one and ours, leaves far less padding than random batches
    assert train["sft", "stock"]["padding_share"] > 2 * train["sft", "ours"]["padding_share"]
    assert train["sft", "stock"]["padding_share"] > 2 * train["sft", "stock, length-grouped"]["padding_share"]
    (teacher,) = report["teacher"]
    assert teacher["requests"] == 60 and teacher["failed_requests"] == 0 and 0 < teacher["share_of_limit"] <= 1.2
    assert {r["command"] for r in report["overhead"]} == {"tinythinker --help", "dvc repro (no-op)"}
    assert "generation chain" in run.stdout and "sampling" in run.stdout


def test_unknown_benchmark_is_refused():
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "chain,gpu"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "unknown benchmark(s) gpu" in run.stderr


@pytest.mark.parametrize("flag,message", [("--model", "is no model directory"), ("--csqa", "has no dev_rand_split")])
def test_a_wrong_path_is_refused_before_any_work(tmp_path, flag, message):
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), flag, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and f"{flag}: {tmp_path} {message}" in run.stderr


SHARED_CSQA = REPO.parent / "shared" / "datasets" / "csqa"


def test_gpu_check_teacher_answers_every_csqa_request_validly():
    """The GPU check's local teacher: every completion passes the spec 3.3 checks and backs the gold option."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    from tinythinker.teacher.parse import parse_completion
    from tinythinker.teacher.prompts import user_message

    record = {"question": "Where would you put a plate after washing it?", "answer": "C",
              "choices": [{"label": x, "text": t} for x, t in zip("ABCDE", ["oven", "floor", "cupboard, shelf",
                                                                           "table", "sink"])]}
    for i in range(3):
        candidate, reason = parse_completion(gpu_check.rationale(user_message(record), i), 5)
        assert reason is None and candidate["answer"] == "C"
        assert [p[0] for p in candidate["prefixes"]] == list("CABDE")
        assert "cupboard, shelf" in candidate["reasons"][0] and f"view {i}" in candidate["reasons"][0]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_cpu(tmp_path):
    if not SHARED_CSQA.exists():
        pytest.skip(f"official CSQA files not found at {SHARED_CSQA} (shared/ must sit beside the repository)")
    out = tmp_path / "check.json"
    run = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--source", str(SHARED_CSQA),
                          "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["complete"] and res["mode"] == "cpu" and res["precisions"] == ["fp32"]
    data = res["data"]
    assert list(data["stages"]) == ["download", "prepare", "corpus", "prompt", "request", "build", "tokenizer", "pretrain"]
    assert data["teacher_requests"] >= res["sizes"]["train"] - res["sizes"]["test"]  # one per training question
    stages = data["fp32"]["stages"]
    assert list(stages) == ["sft", "test_sft", "dpo_sample", "dpo_train", "test_dpo"]
    assert stages["sft"]["result"]["train_steps"] > 0 and stages["dpo_train"]["result"]["steps"] >= 0
    assert stages["test_dpo"]["result"]["questions"] == res["sizes"]["test"]
    assert all(s["seconds"] > 0 for s in stages.values())
    assert "gpu_check" in out.with_suffix(".txt").read_text() and "[gpu_check] sft" in run.stdout
    # the measured parts, each in tiny form, each written beside the pipeline's result
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_parts import PARTS
    assert list(res["parts"]) == [*PARTS, "pipeline"]
    for name in PARTS:
        part = json.loads((tmp_path / f"cpu-check-{name}.json").read_text())
        assert "error" not in part and part["tiny"], part.get("traceback")
        rows = part.get("rows", []) + part.get("phases", [])
        assert rows and all(r.get("seconds", 0) > 0 or "skipped" in r for r in rows), rows
    # t5-small's tiny part compiles the decode step on the CPU too (the compiled rows' code path); t5-base's does not
    chain = json.loads((tmp_path / "cpu-check-chain-t5-small.json").read_text())["rows"]
    assert [(r.get("cache"), r.get("compiled", False)) for r in chain] == [
        (None, False), ("dynamic", False), ("static", False), ("static", True), ("static", True)]
    assert chain[1]["vs_original"] > 0 and all("seconds" in r for r in chain)
    chain = json.loads((tmp_path / "cpu-check-chain-t5-base.json").read_text())["rows"]
    assert "skipped" in chain[-1] and "compiled" not in chain[-1]


def test_reading_bench_counts_analyses_that_name_their_own_thing(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from reading import analysis_reading

    questions = {"q1": {"block": "Which one is a fish?\n(A) ice cream (B) zadrim"},
                 "q2": {"block": "Which one is a tool?\n(A) spade (B) owl"}}
    rows = [{"qid": "q1", "analyses": {"A": "A is ice cream, which is a food, not a fish.",
                                       "B": "B is zadrim, which is a fish."}},
            {"qid": "q2", "analyses": {"A": "A is owl, which is a bird, not a tool.",  # the other option's thing
                                       "B": "B is owl, which is a bird, not a tool."}}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert analysis_reading(path, questions) == {"analyses_naming_their_thing": 75.0, "questions_all_named": 50.0}


def test_the_base_student_experiment_learns_from_nothing_of_the_default_world():
    """experiments/base_student.py: its worlds hold no category, thing, clue or sentence of the default world, no
    word is shared between two of them, and its tokenizer gives every such word one piece and cuts any other word
    of the generator into its syllables."""
    import random
    import re

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import base_student as b

    from tinythinker.data.synthetic import CLUES, CODAS, WORLD, corpus, generate, invented, invented_clues
    from tinythinker.params import MAX_CLUES, MAX_ENTITIES, load

    recipe = b.Recipe(worlds=3, questions_per_world=30)
    data = b.texts(b.mixture(recipe))
    words = {w for t in data for w in re.findall(r"[a-z]+", t)}
    things = set(WORLD) | {e for es in WORLD.values() for e in es} | {
        e for es in invented(MAX_ENTITIES).values() for e in es}
    assert not words & things
    clues = [k for ks in CLUES.values() for k in ks] + [k for ks in invented_clues(MAX_CLUES).values() for k in ks]
    joined = "\n".join(data)
    assert not [k for k in clues if re.search(rf"\b{re.escape(k)}\b", joined)]
    default = load(REPO / "params.yaml").dataset.synthetic
    sentences = set(corpus(default, 42)[0]) | {q["question"] for qs in generate(default, 42).values() for q in qs}
    assert not sentences & set(data)
    worlds = b.other_worlds(3, recipe.size)
    mine = [{e for es in t.values() for e in es} for t, _ in worlds]
    assert not mine[0] & mine[1] and not mine[1] & mine[2]

    tok = b.syllable_tokenizer(data, ["dobrol"])
    assert tok.tokenize("(B) dobrol.")[-2:] == ["▁dobrol", "."] and tok.tokenize("(B)")[1] == tok.tokenize("B,")[1]
    rng = random.Random(0)
    for w in {b._syllabic(rng, rng.randint(1, 3), CODAS) for _ in range(500)} - {"dobrol"}:
        pieces = tok.tokenize(w)
        assert "".join(pieces).lstrip("▁") == w and len(pieces) <= len(re.findall("[aeiou]", w)) + 1, (w, pieces)
