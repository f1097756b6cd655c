"""The model stages as two processes (gloo DDP on CPU through `accelerate launch`) against one process.

One workspace (17 questions of a learnable toy task, a fixed initial student, hand-made DPO pairs) is run by
tests/stages_traced.py once as one process and once as two; it records every optimizer step's example indices
per process, the questions each generation call got and the metrics. Checked: every example exactly once per
epoch over both processes, both processes in the same stage block at every step, the DPO schedule divided by
the process count as spec 6.3 divides it, the same reference log-probs, generation split in equal shares and
gathered in order. A third run, two processes with gradient_accumulation_steps 2 (training stages only), checks
that each process trains on k micro-batches per optimizer step, all of one step's batch of batch x k x N.
"""
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.helpers import questions, student_stages, write_task

from tinythinker import protocol as P
from tinythinker.io import read_jsonl, write_jsonl
from tinythinker.params import load, to_dict
from tinythinker.paths import Paths
from tinythinker.reflect.schedule import schedule_intervals
from tinythinker.lm.curriculum import CurriculumBatchSampler, sft_intervals

# Its module fixture builds what every test here reads: one xdist worker runs them all (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("multiprocess")

HERE = Path(__file__).parent
N_QUESTIONS = 17  # 17 recall rows in batches of 2 x 4: 8, 8 and a lone 1 that must join a batch, not vanish
PARAMS = load(HERE.parents[1] / "params.yaml").replace(**{
    "student.embedded.vocab_size": 200, "student.embedded.d_model": 32, "student.embedded.d_ff": 64,
    "student.embedded.d_kv": 8, "student.embedded.num_heads": 4, "student.embedded.num_layers": 1,
    "student.embedded.num_decoder_layers": 1, "student.embedded.dropout_rate": 0.0,
    "sft.batch_size": 4, "sft.learning_rate": 1e-2, "sft.epochs": 2.0, "sft.interval": 1, "sft.eval_every": 11,
    "generation.max_new_tokens": 8, "generation.batch_size": 16,
    "dpo.batch_size": 4, "dpo.passes": 2, "dpo.samples": 2, "dpo.max_questions": None,
    "dpo.iterations": {"iter1": {"init": "models/init"}, "hand": {"init": "models/init"}},
    "student.pretrain.steps": 0, "sft.eval_questions": 0})


ACC = 2
ACC_PARAMS = PARAMS.replace(**{"sft.gradient_accumulation_steps": ACC, "dpo.gradient_accumulation_steps": ACC})


def _workspace(root: Path) -> tuple[Paths, dict[str, int], dict[str, int]]:
    """Stage data, tokenizer, a saved initial student and hand-made pairs; (paths, SFT sizes, DPO sizes)."""
    from tinythinker.lm.model import load_student

    paths = Paths(root)
    qs = questions(N_QUESTIONS, seed=3)
    write_task(paths, qs)
    (root / "params.yaml").write_text(yaml.safe_dump(to_dict(PARAMS), sort_keys=False))
    student_stages(PARAMS, paths)
    model, tokenizer = load_student(PARAMS, paths)
    model.save_pretrained(root / "models/init")
    tokenizer.save_pretrained(root / "models/init")
    recall = [{"qid": q["qid"], "prompt": P.recall_prompt(q["block"]), "chosen": f"A {q['kind']} it is.",
               "rejected": "Nothing is known."} for q in qs]
    analyze = [{"qid": q["qid"], "prompt": P.analyze_prompt(q["block"], x, "Known."), "chosen": f"{x} fits.",
                "rejected": f"{x} does not fit."} for q in qs for x in "AB"]
    write_jsonl(paths.sft_data / "chains.jsonl",  # the teacher's chains: dpo_sample's chosen top-up
                [{"qid": q["qid"], "block": q["block"], "gt": q["gt"], "recall": f"A {q['kind']} it is.",
                  "analyses": {x: f"{x} fits." for x in "ABC"}} for q in qs])
    write_jsonl(paths.dpo_data("hand") / "recall_pairs.jsonl", recall)
    write_jsonl(paths.dpo_data("hand") / "analyze_pairs.jsonl", analyze)
    write_jsonl(paths.dpo_data("hand") / "summarize_pairs.jsonl", [])
    sft_sizes = {s: len(read_jsonl(paths.stage_file("recall_analyze_summarize", s)))
                 for s in ("recall", "analyze", "summarize")}
    return paths, sft_sizes, {"recall": len(recall), "analyze": len(analyze)}


def _run(root: Path, out: Path, processes: int, stages: str = "sft,test,dpo_sample,dpo_train") -> list[dict]:
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(processes)] if processes > 1 else \
        [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(launch + [str(HERE / "stages_traced.py"), str(root), str(out), stages], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return [json.loads((out / f"rank{k}.json").read_text()) for k in range(processes)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("mp")
    _, sft_sizes, dpo_sizes = _workspace(base / "one")
    shutil.copytree(base / "one", base / "two")
    shutil.copytree(base / "one", base / "acc")
    (base / "acc/params.yaml").write_text(yaml.safe_dump(to_dict(ACC_PARAMS), sort_keys=False))
    return {"one": _run(base / "one", base / "out1", 1), "two": _run(base / "two", base / "out2", 2),
            "acc": _run(base / "acc", base / "out3", 2, "sft,dpo_train"),
            "sft_sizes": sft_sizes, "dpo_sizes": dpo_sizes, "root": base}


def _stage_of(sizes: dict[str, int]):
    bounds, total = [], 0
    for stage, n in sizes.items():
        bounds.append((total, total + n, stage))
        total += n
    return lambda i: next(s for lo, hi, s in bounds if lo <= i < hi)


def _check_steps(ranks: list[dict], sizes: dict[str, int], epoch_steps: int, total_steps: int,
                 accumulation: int = 1) -> None:
    """Per optimizer step: every process trained on `accumulation` non-empty micro-batches, together its share
    of one batch, all processes in the same stage; per epoch: every example exactly once over processes and
    steps (the last epoch may stop early: at most once)."""
    stage_of, total = _stage_of(sizes), sum(sizes.values())
    micro: list[dict[int, list]] = [{} for _ in ranks]
    for m, r in zip(micro, ranks):
        for e in r["steps"]:
            m.setdefault(e["step"], []).append(e["ids"])
    assert all(sorted(m) == list(range(total_steps)) for m in micro)
    assert all(len(b) == accumulation and all(b) for m in micro for b in m.values())
    per_rank = [{step: [i for b in batches for i in b] for step, batches in m.items()} for m in micro]
    for step in range(total_steps):
        shares = [steps[step] for steps in per_rank]
        assert len({stage_of(i) for share in shares for i in share}) == 1, (step, shares)
    for start in range(0, total_steps, epoch_steps):
        seen = Counter(i for steps in per_rank for s in range(start, min(start + epoch_steps, total_steps))
                       for i in steps[s])
        assert max(seen.values()) == 1
        if start + epoch_steps <= total_steps:
            assert sorted(seen) == list(range(total))


@pytest.mark.slow
def test_map_sharded_keeps_order_with_equal_shares(runs):
    one, two = runs["one"][0], runs["two"]
    assert one["map"] == [[x, 0] for x in range(7)] and one["map_calls"] == [7]
    for r in two:  # every process gets all results; process k computed items k, k+2, ...
        assert r["map"] == [[x, x % 2] for x in range(7)]
        assert r["map_calls"] == [4]  # 4 and 3 items, the shorter share padded


@pytest.mark.slow
def test_sft_two_processes_see_each_example_once_per_epoch_in_lockstep(runs):
    sizes = runs["sft_sizes"]
    intervals = sft_intervals("recall_analyze_summarize", 1, 3)
    for ranks, n in ((runs["one"], 1), (runs["two"], 2)):
        epoch = len(CurriculumBatchSampler(sizes, intervals, PARAMS.sft.batch_size, 0, num_replicas=n))
        m = ranks[0]["sft"]["metrics"]
        assert m["train_steps"] == 2 * epoch and m["processes"] == n
        _check_steps([r["sft"] for r in ranks], sizes, epoch, m["train_steps"])
    # two processes: a step is a batch of 2 x 4, so an epoch takes about half the steps
    one = runs["one"][0]["sft"]["metrics"]["train_steps"]
    two = runs["two"][0]["sft"]["metrics"]["train_steps"]
    assert (one, two) == (2 * (5 + 13 + 5), 2 * (2 + 7 + 2))  # 17/51/17 rows: ceil(n/4) vs ceil(n/8), 17 -> 8+9
    # validation split across the two: each chain call got half of the 17 questions, together all of them
    valid = [[g["qids"] for g in r["sft"]["generate"] if g["desc"] == "valid"] for r in runs["two"]]
    assert len(valid[0]) == len(valid[1]) >= 1
    qids = [q["qid"] for q in read_jsonl(runs["root"] / "one/data/sft/valid.jsonl")]
    for a, b in zip(*valid):
        assert len(a) == len(b) == 9 and set(a) | set(b) == set(qids)


@pytest.mark.slow
def test_dpo_schedule_divided_by_processes_each_pair_once_per_pass(runs):
    sizes, b = runs["dpo_sizes"], PARAMS.dpo.batch_size
    steps = {}
    for ranks, n in ((runs["one"], 1), (runs["two"], 2)):
        cycle = sum(schedule_intervals(sizes["recall"], sizes["analyze"], b * n).values())  # spec 6.3: batch x n_gpu
        m = ranks[0]["dpo_train"]["metrics"]
        assert all(r["dpo_train"]["metrics"] == m for r in ranks)
        steps[n] = m["steps"]
        assert m["steps"] == PARAMS.dpo.passes * cycle
        epoch = len(CurriculumBatchSampler(sizes, schedule_intervals(sizes["recall"], sizes["analyze"], b * n),
                                           b, 0, num_replicas=n))
        _check_steps([r["dpo_train"] for r in ranks], sizes, epoch, m["steps"])
    # 17 recall / 34 analyze pairs, batch 4: one process 17//4+1 = 5 and (34//17+1) x 5 = 15 per cycle, two
    # processes 17//8+1 = 3 and 3 x 3 = 9; 2 passes each
    assert (steps[1], steps[2]) == (2 * 20, 2 * 12)
    # the reference pass, split and gathered, gives each pair the log-probs one process gives it
    refs = {}
    for name in ("one", "two"):
        refs[name] = {i: ref for r in runs[name] for e in r["dpo_train"]["steps"] for i, ref in zip(e["ids"], e["ref"])}
    assert sorted(refs["one"]) == sorted(refs["two"]) == list(range(sum(sizes.values())))
    for i, (c, r) in refs["one"].items():
        assert refs["two"][i] == pytest.approx([c, r], abs=1e-4)


@pytest.mark.slow
def test_generation_stages_split_and_gathered(runs):
    root = runs["root"]
    # test stage: each process one call on its half; the main one writes every prediction in question order
    shares = [[g["qids"] for g in r["test"]["generate"]] for r in runs["two"]]
    assert [len(s) for s in shares] == [1, 1] and len(shares[0][0]) == len(shares[1][0]) == 9
    one = read_jsonl(root / "one/data/predictions/test/init.jsonl")
    two = read_jsonl(root / "two/data/predictions/test/init.jsonl")
    assert [r["qid"] for r in two] == [r["qid"] for r in one] == [f"q{i}" for i in range(N_QUESTIONS)]
    assert runs["two"][0]["test"]["metrics"] == runs["two"][1]["test"]["metrics"]
    assert runs["two"][0]["test"]["metrics"]["questions"] == N_QUESTIONS
    # dpo_sample: 17 questions x 2 samples split 17/17 between the processes; pairs written once, same everywhere
    recall_calls = [[g["qids"] for g in r["dpo_sample"]["generate"] if "recall samples" in g["desc"]]
                    for r in runs["two"]]
    assert [len(c) for c in recall_calls] == [1, 1]
    together = Counter(recall_calls[0][0]) + Counter(recall_calls[1][0])
    assert len(recall_calls[0][0]) == len(recall_calls[1][0]) == N_QUESTIONS
    assert together == Counter({f"q{i}": 2 for i in range(N_QUESTIONS)})
    m = runs["two"][0]["dpo_sample"]["metrics"]
    assert m == runs["two"][1]["dpo_sample"]["metrics"] and m["questions"] == N_QUESTIONS
    written = read_jsonl(root / "two/data/dpo/iter1/recall_pairs.jsonl")
    assert len(written) == m["recall_pairs"]


@pytest.mark.slow
def test_accumulation_under_two_processes(runs):
    """k = 2, N = 2: a step is a batch of 4 x 2 x 2 = 16 shared out, each process its share in 2 micro-batches;
    the SFT blocks and DPO's spec 6.3 intervals count these optimizer steps."""
    k, ranks = ACC, runs["acc"]
    sizes = runs["sft_sizes"]
    intervals = sft_intervals("recall_analyze_summarize", 1, 3)
    sampler = CurriculumBatchSampler(sizes, intervals, PARAMS.sft.batch_size, 0, accumulation=k, num_replicas=2)
    epoch = len(sampler) // k
    m = ranks[0]["sft"]["metrics"]
    # 17/51/17 rows in steps of 16: 17 (the lone 17th joins), 16 + 16 + 19, 17; two epochs
    assert epoch == 5 and m["train_steps"] == 2 * epoch and m["processes"] == 2
    _check_steps([r["sft"] for r in ranks], sizes, epoch, m["train_steps"], k)
    assert {len(e["ids"]) for r in ranks for e in r["sft"]["steps"]} == {4, 5}  # about sft.batch_size each

    sizes, b = runs["dpo_sizes"], PARAMS.dpo.batch_size
    iv = schedule_intervals(sizes["recall"], sizes["analyze"], b * k * 2)
    assert iv == {"recall": 2, "analyze": 6}  # 17 // 16 + 1, (34 // 17 + 1) x 2
    m = ranks[0]["dpo_train"]["metrics"]
    assert all(r["dpo_train"]["metrics"] == m for r in ranks)
    assert m["steps"] == PARAMS.dpo.passes * sum(iv.values())
    epoch = len(CurriculumBatchSampler(sizes, iv, b, 0, accumulation=k, num_replicas=2)) // k
    _check_steps([r["dpo_train"] for r in ranks], sizes, epoch, m["steps"], k)
