"""Task files, download and prepare on the real official CSQA / OBQA files and an official-format StrategyQA
fixture: split sizes of spec 1.3, texts kept intact, determinism, and bad input named by file and line."""
import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinythinker import protocol
from tinythinker.cli import app
from tinythinker.data.download import download
from tinythinker.data.prepare import prepare
from tinythinker.data.tasks import TASK_DIR, TaskError, available, get_task, load_task
from tinythinker.io import DataError, read_json, read_jsonl
from tinythinker.params import Params, ParamsError, load
from tinythinker.paths import Paths

BASE = load(Path(__file__).resolve().parents[2] / "params.yaml")  # params.yaml holds every value

# CI runs in a fresh clone with shared/ beside it: <clone>/../shared/datasets.
SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
OUTPUTS = ("train.jsonl", "valid.jsonl", "test.jsonl", "split_ids.json")


def official(name: str) -> Path:
    d = SHARED / name
    if not d.is_dir():
        pytest.skip(f"official {name} files not found at {d} (shared/ must sit beside the repository)")
    return d


def params(name: str, source=None, seed: int = 42, **more) -> Params:
    return BASE.replace(**{"dataset.name": name, "dataset.source": None if source is None else str(source),
                           "dataset.seed": seed, **more})


def run(p: Params, root: Path) -> Paths:
    paths = Paths(root)
    download(p, paths)
    prepare(p, paths)
    return paths


def splits(paths: Paths) -> dict[str, list[dict]]:
    return {s: read_jsonl(paths.split(s)) for s in ("train", "valid", "test")}


def original(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def csqa(tmp_path_factory) -> Paths:
    return run(params("csqa", official("csqa")), tmp_path_factory.mktemp("csqa"))


@pytest.fixture(scope="module")
def obqa(tmp_path_factory) -> Paths:
    return run(params("obqa", official("obqa")), tmp_path_factory.mktemp("obqa"))


# --- task files ---------------------------------------------------------------------------------------------
def test_every_task_file_loads_with_its_defaults():
    assert set(available()) == {"csqa", "obqa", "strategyqa", "synthetic"}
    expect = {"csqa": (5, 8, "tau/commonsense_qa"), "obqa": (4, 4, "allenai/openbookqa"),
              "strategyqa": (2, 4, "ChilleD/StrategyQA"), "synthetic": (None, 4, None)}
    for name, (options, samples, hub) in expect.items():
        t = get_task(name)
        assert (t.num_options, t.teacher.samples) == (options, samples)
        assert (t.hub.path if t.hub else None) == hub
    assert get_task("obqa").hub.config == "main" and get_task("obqa").hub.fields.question == "question_stem"
    assert get_task("strategyqa").boolean_options == ("yes", "no")
    assert get_task("synthetic").num_options_for(params("synthetic", **{"dataset.synthetic.num_options": 3})) == 3


def test_unknown_dataset_name_is_refused():
    with pytest.raises(TaskError, match=r"dataset.name: unknown task 'mnist' \(known: csqa, obqa"):
        get_task("mnist")
    with pytest.raises(ParamsError, match="dataset.name: must be one of"):
        params("mnist")


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t["split"].update(method="random"), "split.method: must be one of"),
    (lambda t: t["split"].pop("test"), "split.test: required with method sample_valid"),
    (lambda t: t["split"].update(test="valid"), "split: unknown official split 'valid'"),
    (lambda t: t.update(num_options="five"), "num_options: expected an integer"),
    (lambda t: t.pop("exemplars"), "exemplars: required"),
    (lambda t: t["hub"].update(splits={"train": ["train"]}), "hub.splits: must name the same official splits"),
    (lambda t: t["local"]["fields"].pop("choices"), "local.fields.choices: required for multiple-choice"),
    (lambda t: t.update(teacher={"samples": 0, "rounds": 3}), "teacher.samples: must be >= 1"),
    (lambda t: t.update(extra=1), "extra: unknown key"),
])
def test_bad_task_file_names_file_and_key(tmp_path, edit, needle):
    import yaml

    raw = yaml.safe_load((TASK_DIR / "csqa.yaml").read_text())
    edit(raw)
    f = tmp_path / "csqa.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(TaskError, match=re.escape(f"csqa.yaml: {needle}")):
        load_task(f)


# --- CSQA ------------------------------------------------------------------------------------------------------
def test_csqa_split_sizes_and_membership(csqa):
    s = splits(csqa)
    assert [len(s[k]) for k in ("train", "valid", "test")] == [8520, 1221, 1221]
    train_ids = [r["id"] for r in original(official("csqa") / "train_rand_split.jsonl")]
    dev_ids = [r["id"] for r in original(official("csqa") / "dev_rand_split.jsonl")]
    assert [r["id"] for r in s["test"]] == dev_ids  # test = official dev, in its order
    ours = [r["id"] for r in s["train"]], [r["id"] for r in s["valid"]]
    assert set(ours[0]).isdisjoint(ours[1]) and sorted(ours[0] + ours[1]) == sorted(train_ids)
    assert ours[0] == [i for i in train_ids if i in set(ours[0])]  # official order kept
    ids = read_json(csqa.prepared / "split_ids.json")
    assert ids["train"] == ours[0] and ids["valid"] == ours[1] and ids["test"] == dev_ids
    assert (ids["seed"], ids["dataset"]) == (42, "csqa")
    assert read_json(csqa.metric("prepare")) == {"train": 8520, "valid": 1221, "test": 1221, "num_options": 5}


def test_csqa_records_are_the_official_ones_untouched(csqa):
    raw = read_jsonl(csqa.raw / "train.jsonl")
    src = original(official("csqa") / "train_rand_split.jsonl")
    assert Counter(r["answer"] for r in raw) == {"A": 1909, "B": 1973, "C": 1946, "D": 1985, "E": 1928}
    for r, o in zip(raw, src, strict=True):
        assert r == {"id": o["id"], "question": o["question"]["stem"], "answer": o["answerKey"],
                     "choices": [{"label": c["label"], "text": c["text"]} for c in o["question"]["choices"]]}
    assert sum("  " in r["question"] for r in raw) > 500  # ~10 % of stems have double spaces, kept
    s = splits(csqa)
    assert Counter(r["answer"] for r in s["train"] + s["valid"]) == Counter(r["answer"] for r in raw)
    # A uniform sample keeps every label near its share of 1,221 / 5.
    assert all(200 < n < 290 for n in Counter(r["answer"] for r in s["valid"]).values())


def test_csqa_same_seed_same_bytes_other_seed_other_valid(csqa, tmp_path):
    again = run(params("csqa", official("csqa")), tmp_path / "again")
    for f in OUTPUTS:
        assert (again.prepared / f).read_bytes() == (csqa.prepared / f).read_bytes(), f
    assert again.metric("prepare").read_bytes() == csqa.metric("prepare").read_bytes()
    other = run(params("csqa", official("csqa"), seed=7), tmp_path / "other")
    a, b = read_json(csqa.prepared / "split_ids.json"), read_json(other.prepared / "split_ids.json")
    assert a["test"] == b["test"] and len(b["valid"]) == 1221
    assert len(set(a["valid"]) & set(b["valid"])) < 400  # two independent 12.5 % samples share ~150


def test_limit_caps_every_split_with_a_seeded_sample(csqa, tmp_path):
    """`dataset.limit` on the official CSQA files: 200 of each split, a seeded subset in the split's order."""
    small = run(params("csqa", official("csqa"), **{"dataset.limit": 200}), tmp_path / "small")
    full, s = splits(csqa), splits(small)
    for k in ("train", "valid", "test"):
        ids, all_ids = [r["id"] for r in s[k]], [r["id"] for r in full[k]]
        assert len(ids) == 200 and ids == [i for i in all_ids if i in set(ids)], k  # subset, order kept
        assert s[k] == [r for r in full[k] if r["id"] in set(ids)]  # the records themselves, untouched
    assert [r["id"] for r in s["train"]] != [r["id"] for r in full["train"][:200]]  # sampled, not the head
    ids = read_json(small.prepared / "split_ids.json")
    assert ids["limit"] == 200 and ids["train"] == [r["id"] for r in s["train"]]
    assert read_json(csqa.prepared / "split_ids.json")["limit"] is None
    assert read_json(small.metric("prepare")) == {"train": 200, "valid": 200, "test": 200, "num_options": 5,
                                                  "train_before_limit": 8520, "valid_before_limit": 1221,
                                                  "test_before_limit": 1221}
    again = run(params("csqa", official("csqa"), **{"dataset.limit": 200}), tmp_path / "again")
    assert all((again.prepared / f).read_bytes() == (small.prepared / f).read_bytes() for f in OUTPUTS)
    other = run(params("csqa", official("csqa"), seed=7, **{"dataset.limit": 200}), tmp_path / "other")
    assert len(set(read_json(other.prepared / "split_ids.json")["test"]) & set(ids["test"])) < 100
    big = run(params("csqa", official("csqa"), **{"dataset.limit": 5000}), tmp_path / "big")
    assert read_json(big.metric("prepare"))["valid"] == 1221  # a cap, never more than the split has


# --- OBQA ------------------------------------------------------------------------------------------------------
def test_obqa_official_splits(obqa):
    s = splits(obqa)
    assert [len(s[k]) for k in ("train", "valid", "test")] == [4957, 500, 500]
    for ours, theirs in (("train", "train"), ("valid", "dev"), ("test", "test")):
        assert [r["id"] for r in s[ours]] == [r["id"] for r in original(official("obqa") / f"{theirs}.jsonl")]
    assert read_json(obqa.metric("prepare"))["num_options"] == 4


def test_obqa_options_with_comma_survive_into_the_question_block(obqa):
    option_re = re.compile(r"\(([A-Z])\) (.*?)(?= \([A-Z]\) |$)")
    counts = {}
    for ours, theirs in (("train", "train"), ("valid", "dev"), ("test", "test")):
        src = {o["id"]: o for o in original(official("obqa") / f"{theirs}.jsonl")}
        n = 0
        for r in read_jsonl(obqa.split(ours)):
            texts = [c["text"] for c in src[r["id"]]["question"]["choices"]]
            if not any(", " in t for t in texts):
                continue
            n += 1
            question, options = protocol.question_block(r["question"], r["choices"]).split("\n")
            assert question == src[r["id"]]["question"]["stem"]
            assert option_re.findall(options) == list(zip("ABCD", texts)), r["id"]
        counts[ours] = n
    assert counts == {"train": 55, "valid": 10, "test": 6}


# --- StrategyQA (official format, built here: the file is not redistributed) ------------------------------------
def strategyqa_file(path: Path, n: int) -> list[dict]:
    items = [{"qid": f"q{i:04d}", "term": f"term {i}", "description": "a thing", "question": f"Is {i} even?",
              "answer": i % 3 != 0, "facts": [f"{i} is a number."], "decomposition": [f"Is {i} divisible by 2?"]}
             for i in range(n)]
    path.write_text(json.dumps(items, indent=2))
    return items


@pytest.mark.parametrize("n", [2290, 57])
def test_strategyqa_shuffled_80_10_10(tmp_path, n):
    items = strategyqa_file(tmp_path / "strategyqa_train.json", n)
    paths = run(params("strategyqa", tmp_path), tmp_path / "run")  # source: the directory
    s = splits(paths)
    assert [len(s[k]) for k in ("train", "valid", "test")] == [n * 8 // 10, n // 10, n - n * 8 // 10 - n // 10]
    assert sorted(r["id"] for v in s.values() for r in v) == [it["qid"] for it in items]
    by_id = {it["qid"]: it for it in items}
    for r in s["train"]:
        assert r["choices"] == [{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}]
        assert r["answer"] == ("A" if by_id[r["id"]]["answer"] else "B")
        assert r["question"] == by_id[r["id"]]["question"]
    assert [r["id"] for r in s["train"]] != sorted(r["id"] for r in s["train"])  # shuffled
    # The file itself as source gives the same splits; another seed gives others.
    same = run(params("strategyqa", tmp_path / "strategyqa_train.json"), tmp_path / "file")
    assert all(same.split(k).read_bytes() == paths.split(k).read_bytes() for k in ("train", "valid", "test"))
    other = run(params("strategyqa", tmp_path, seed=1), tmp_path / "seed1")
    assert read_json(other.prepared / "split_ids.json")["test"] != read_json(paths.prepared / "split_ids.json")["test"]


# --- bad input -------------------------------------------------------------------------------------------------
def csqa_line(qid: str, answer: str = "A", choices=None, drop: str = "") -> str:
    """One line in the official CSQA format; `drop` removes a field (question.stem: a nested one)."""
    row = {"answerKey": answer, "id": qid, "question": {"question_concept": "x", "stem": f"Question {qid}?",
           "choices": [{"label": lab, "text": f"option {lab}"} for lab in "ABCDE"]}}
    if choices is not None:
        row["question"]["choices"] = choices
    if drop:
        parent, _, key = drop.rpartition(".")
        (row[parent] if parent else row).pop(key)
    return json.dumps(row)


@pytest.mark.parametrize("bad_line,needle", [
    ('{"answerKey": "A", "id": "q2", ', "not valid JSON"),
    (csqa_line("q2", drop="answerKey"), "missing field 'answerKey'"),
    (csqa_line("q2", drop="question.stem"), "missing field 'question.stem'"),
    (csqa_line("q1"), "duplicate id 'q1' (first at"),
    (csqa_line("q2", answer="F"), "answer 'F' is not among the choice labels"),
    (csqa_line("q2", choices=[]), "choices must be a non-empty list"),
    (csqa_line("q2", choices=[{"label": "A", "text": "x"}] * 5), "repeated choice labels"),
    (csqa_line("q2", choices=[{"label": lab, "text": "x"} for lab in "ABCD"]), "expected 5 choices, got 4"),
])
def test_bad_csqa_line_is_named_by_file_and_line(tmp_path, bad_line, needle):
    train = tmp_path / "train_rand_split.jsonl"
    train.write_text("\n".join([csqa_line("q1"), bad_line, csqa_line("q3")]) + "\n")
    (tmp_path / "dev_rand_split.jsonl").write_text(csqa_line("d1") + "\n")
    with pytest.raises(DataError, match=re.escape(f"{train}:2: ") + ".*" + re.escape(needle)):
        download(params("csqa", tmp_path), Paths(tmp_path / "run"))
    assert not (tmp_path / "run" / "data" / "raw").exists()  # nothing half-written


def test_duplicate_id_across_official_files(tmp_path):
    (tmp_path / "train_rand_split.jsonl").write_text(csqa_line("q1") + "\n" + csqa_line("q2") + "\n")
    dev = tmp_path / "dev_rand_split.jsonl"
    dev.write_text(csqa_line("d1") + "\n" + csqa_line("q2") + "\n")
    with pytest.raises(DataError, match=re.escape(f"{dev}:2: duplicate id 'q2' (first at ") + ".*train_rand_split"):
        download(params("csqa", tmp_path), Paths(tmp_path / "run"))


def test_bad_strategyqa_item_is_named_by_its_line(tmp_path):
    f = tmp_path / "strategyqa_train.json"
    items = strategyqa_file(f, 5)
    items[3]["answer"] = "yes"
    f.write_text(json.dumps(items, indent=2))
    line = [i + 1 for i, text in enumerate(f.read_text().splitlines()) if text == "  {"][3]  # item 4 opens here
    with pytest.raises(DataError, match=re.escape(f"{f}:{line}: answer must be true or false")):
        download(params("strategyqa", f), Paths(tmp_path / "run"))
    f.write_text(f.read_text()[:-3])
    with pytest.raises(DataError, match=re.escape(f"{f}:") + r"\d+: not valid JSON"):
        download(params("strategyqa", f), Paths(tmp_path / "run"))


def test_missing_source_files_and_prepare_before_download(tmp_path):
    (tmp_path / "train_rand_split.jsonl").write_text(csqa_line("q1") + "\n")
    with pytest.raises(DataError, match="dev_rand_split.jsonl: no such file"):
        download(params("csqa", tmp_path), Paths(tmp_path / "run"))
    with pytest.raises(DataError, match="several official files"):
        download(params("csqa", tmp_path / "train_rand_split.jsonl"), Paths(tmp_path / "run"))
    with pytest.raises(DataError, match="run `tinythinker download` first"):
        prepare(params("obqa", tmp_path), Paths(tmp_path / "run"))


def test_cli_reports_bad_data_in_one_line_exit_2(tmp_path):
    text = (Path(__file__).resolve().parents[2] / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("name: synthetic", "name: csqa").replace(
        "source: null", "source: nowhere"))
    res = CliRunner().invoke(app, ["download", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "nowhere: dataset.source: no such file or directory" in res.output


# --- Hub (faked: no network here) and the generator ------------------------------------------------------------
def test_hub_rows_are_mapped_per_task(tmp_path, monkeypatch):
    choices = {"label": ["A", "B", "C", "D", "E"], "text": ["a", "b, c", "d", "e", "f"]}
    hub = {
        ("tau/commonsense_qa", None): {
            "train": [{"id": f"t{i}", "question": "Where?", "question_concept": "x", "choices": choices,
                       "answerKey": "B"} for i in range(4)],
            "validation": [{"id": "v0", "question": "Why?", "question_concept": "x", "choices": choices,
                            "answerKey": "E"}],
            "test": [{"id": "u0", "question": "?", "question_concept": "x", "choices": choices, "answerKey": ""}]},
        ("allenai/openbookqa", "main"): {
            s: [{"id": f"{s}{i}", "question_stem": "The sun", "answerKey": "D",
                 "choices": {"text": ["w", "x", "y", "z, and more"], "label": ["A", "B", "C", "D"]}}
                for i in range(2)] for s in ("train", "validation", "test")},
        ("ChilleD/StrategyQA", None): {
            s: [{"qid": f"{s}{i}", "term": "t", "description": "d", "question": "Is it?", "answer": i == 0,
                 "facts": [], "decomposition": []} for i in range(10)] for s in ("train", "test")},
    }
    asked = []

    def load_dataset(path, config, revision):
        asked.append((path, config, revision))
        return hub[(path, config)]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))

    paths = run(params("csqa"), tmp_path / "csqa")
    assert [len(read_jsonl(paths.split(s))) for s in ("train", "valid", "test")] == [3, 1, 1]
    rec = read_jsonl(paths.split("test"))[0]
    assert rec == {"id": "v0", "question": "Why?", "answer": "E",
                   "choices": [{"label": lab, "text": t} for lab, t in zip(choices["label"], choices["text"])]}
    assert read_json(paths.prepared / "split_ids.json")["source"] == "tau/commonsense_qa@" + get_task("csqa").hub.revision

    paths = run(params("obqa"), tmp_path / "obqa")
    rec = read_jsonl(paths.split("valid"))[0]
    assert (rec["id"], rec["question"], rec["choices"][3]["text"]) == ("validation0", "The sun", "z, and more")

    paths = run(params("strategyqa"), tmp_path / "sqa")  # both Hub splits make up the one official file
    rows = read_jsonl(paths.raw / "train.jsonl")
    assert len(rows) == 20 and {r["answer"] for r in rows if r["id"].endswith("0")} == {"A"}
    # every task file's pinned commit reaches load_dataset
    assert all(len(get_task(n).hub.revision) == 40 for n in ("csqa", "obqa", "strategyqa"))
    assert asked == [(t, c, get_task(n).hub.revision) for n, t, c in (
        ("csqa", "tau/commonsense_qa", None), ("obqa", "allenai/openbookqa", "main"),
        ("strategyqa", "ChilleD/StrategyQA", None))]


def test_pinned_hub_revision_is_passed_and_recorded(tmp_path, monkeypatch):
    import dataclasses

    import tinythinker.data.download as download_module
    import tinythinker.data.prepare as prepare_module

    pinned = dataclasses.replace(get_task("obqa"), hub=dataclasses.replace(get_task("obqa").hub, revision="c0ffee" * 6))
    monkeypatch.setattr(download_module, "get_task", lambda name: pinned)
    monkeypatch.setattr(prepare_module, "get_task", lambda name: pinned)
    row = {"id": "x", "question_stem": "Q", "answerKey": "A", "choices": {"text": list("wxyz"), "label": list("ABCD")}}
    asked = []
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda p, c, revision: asked.append(revision) or {
            s: [{**row, "id": f"{s}{i}"} for i in range(2)] for s in ("train", "validation", "test")}))
    paths = run(params("obqa"), tmp_path)
    assert asked == ["c0ffee" * 6]
    assert read_json(paths.prepared / "split_ids.json")["source"] == "allenai/openbookqa@" + "c0ffee" * 6


def test_synthetic_goes_through_the_generator(tmp_path):
    p = params("synthetic", **{"dataset.synthetic.num_train": 40, "dataset.synthetic.num_valid": 8,
                                "dataset.synthetic.num_test": 12, "dataset.synthetic.num_options": 3})
    paths = run(p, tmp_path / "a")
    s = splits(paths)
    assert [len(s[k]) for k in ("train", "valid", "test")] == [40, 8, 12]
    assert all(len(r["choices"]) == 3 and "meta" in r for v in s.values() for r in v)
    assert read_json(paths.metric("prepare")) == {"train": 40, "valid": 8, "test": 12, "num_options": 3}
    again = run(p, tmp_path / "b")
    assert all((again.prepared / f).read_bytes() == (paths.prepared / f).read_bytes() for f in OUTPUTS)
    with pytest.raises(ParamsError, match="dataset.source: must be null"):
        download(params("synthetic", tmp_path), Paths(tmp_path / "c"))
