"""What several test modules share (a plain module, not a test module: test modules import from here, never from
each other): the small learnable task of the student tests, the hand-made DPO pairs of the trainer tests, the
shrunken pipeline in a throwaway copy of the repository (end-to-end tests), and the links of a Markdown page."""
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tinythinker import protocol as P
from tinythinker.io import write_jsonl
from tinythinker.params import load
from tinythinker.paths import Paths

REPO = Path(__file__).resolve().parents[1]
# params.yaml holds every value; its 48 held-out questions (sft.eval_questions) would leave the small task below
# nothing to train on: the tests of held-out questions set their own count
BASE = load(REPO / "params.yaml").replace(**{"sft.eval_questions": 0})

# --- the small task: which word is of the asked kind -------------------------------------------------------------
KINDS = {"color": ["red", "blue", "green"], "animal": ["dog", "cat", "cow"], "fruit": ["apple", "pear", "plum"],
         "tool": ["saw", "hammer", "drill"]}
KIND_OF = {w: k for k, ws in KINDS.items() for w in ws}

# a tiny T5 that learns the task in seconds (tests/student/test_sft.py, test_pretrain.py)
SFT_PARAMS = BASE.replace(**{
    "student.embedded.vocab_size": 200, "student.embedded.d_model": 32, "student.embedded.d_ff": 64,
    "student.embedded.d_kv": 8, "student.embedded.num_heads": 4, "student.embedded.num_layers": 2,
    "student.embedded.num_decoder_layers": 2, "student.embedded.dropout_rate": 0.0,
    "sft.batch_size": 8, "sft.learning_rate": 1e-2, "sft.epochs": 40.0, "sft.interval": 1,
    "sft.eval_every": 40, "generation.max_new_tokens": 40, "generation.batch_size": 64,
    "student.pretrain.steps": 0, "sft.eval_questions": 0})


def questions(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(sorted(KINDS))
        others = [w for k, ws in KINDS.items() if k != kind for w in ws]
        words = [rng.choice(KINDS[kind])] + rng.sample(others, 2)
        rng.shuffle(words)
        choices = [{"label": x, "text": w} for x, w in zip("ABC", words)]
        gt = "ABC"[words.index(next(w for w in words if KIND_OF[w] == kind))]
        out.append({"qid": f"q{i}", "block": P.question_block(f"Which one is a {kind}?", choices),
                    "options": ["A", "B", "C"], "gt": gt, "words": words, "kind": kind})
    return out


def write_task(paths: Paths, qs: list[dict]) -> None:
    st = "recall_analyze_summarize"
    recall = {q["qid"]: f"A {q['kind']} is a kind of thing." for q in qs}
    analyses = {q["qid"]: {x: f"{w} is a {KIND_OF[w]}." for x, w in zip("ABC", q["words"])} for q in qs}
    write_jsonl(paths.stage_file(st, "recall"),
                [{"qid": q["qid"], "input": P.recall_prompt(q["block"]), "target": recall[q["qid"]]} for q in qs])
    write_jsonl(paths.stage_file(st, "analyze"),
                [{"qid": q["qid"], "input": P.analyze_prompt(q["block"], x, recall[q["qid"]]), "target": t, "option": x}
                 for q in qs for x, t in analyses[q["qid"]].items()])
    write_jsonl(paths.stage_file(st, "summarize"),
                [{"qid": q["qid"], "input": P.summarize_prompt(q["block"], recall[q["qid"]], analyses[q["qid"]]),
                  "target": P.summarize_target(q["gt"])} for q in qs])
    plain = [{k: q[k] for k in ("qid", "block", "options", "gt")} for q in qs]
    for name in ("valid", "test", "train_questions"):  # validation on the training questions: learnability
        write_jsonl(paths.sft_data / f"{name}.jsonl", plain)
    # the corpus stage's outputs: the world's facts, and a probe of each
    write_jsonl(paths.corpus / "text.jsonl", [{"text": f"the {w} is a kind of {k}."} for w, k in KIND_OF.items()])
    write_jsonl(paths.corpus / "probe.jsonl", [{"prompt": f"the {w} is a kind of", "answer": k, "held_out": w == "plum"}
                                               for w, k in KIND_OF.items()])


def student_stages(params, paths: Paths) -> None:
    """The tokenizer and pretrain stages (`params` with student.pretrain.steps 0: the initial student, saved)."""
    from tinythinker.student.stages import pretrain, tokenizer_stage

    tokenizer_stage(params, paths)
    pretrain(params, paths)


# --- hand-made DPO pairs (tests/reflect/test_dpo.py, tests/student/test_causal.py) -------------------------------
BLOCK = P.question_block("Which is a metal?", [{"label": "A", "text": "wood"}, {"label": "B", "text": "iron"}])
VALID = [{"qid": "v1", "block": BLOCK, "options": ["A", "B"], "gt": "B"}]
RECALL = [{"qid": "q1", "prompt": P.recall_prompt(BLOCK), "chosen": f"Iron is a metal {i}.",
           "rejected": f"Wood is a metal {i}."} for i in range(3)]
ANALYZE = [{"qid": "q1", "prompt": P.analyze_prompt(BLOCK, x, "Iron is a metal."), "chosen": f"{x} is right.",
            "rejected": f"{x} is wrong."} for x in "AB"]
SUMMARIZE = [{"qid": "q1", "prompt": P.summarize_prompt(BLOCK, "Iron is a metal.", {"A": "no.", "B": "yes."}),
              "chosen": P.summarize_target("B"), "rejected": P.summarize_target(x)} for x in ("A", "A or B")]


def dpo_trainer(kind, params, root: Path, model, tokenizer, data, sizes: dict, intervals: dict, valid, chain_kwargs,
                callbacks=()):
    """The DPO trainer of `kind` (a reflect/trainers.py entry) as `dpo_train` builds it: the iteration's arguments
    (checkpoints under `root`) and its curriculum sampler over `sizes` rows per pair kind."""
    from tinythinker.reflect.schedule import batch_sampler, training_args
    from tinythinker.lm.engine import Run

    run = Run(params, Paths(root), "dpo/test", "dpo")
    args = training_args(run, params, intervals, kind.arguments(params))
    return kind.build_trainer(params, model, tokenizer, data, valid, chain_kwargs, args=args,
                              batch_sampler=batch_sampler(params, sizes, intervals, args), callbacks=callbacks)


# --- the shrunken pipeline in a throwaway copy of the repository ---------------------------------------------
# Small enough for CI on two cores; the shape of every stage is unchanged.
TINY = {
    "dataset.synthetic.num_train": 48, "dataset.synthetic.num_valid": 12, "dataset.synthetic.num_test": 12,
    "student.embedded.vocab_size": 300, "student.embedded.d_model": 32, "student.embedded.d_ff": 64,
    "student.embedded.d_kv": 8, "student.embedded.num_heads": 2,
    "student.embedded.num_layers": 1, "student.embedded.num_decoder_layers": 1,
    "student.pretrain.steps": 30, "student.pretrain.batch_size": 16,
    "sft.epochs": 1.0, "sft.batch_size": 16, "sft.interval": 2, "sft.eval_questions": 6,
    "generation.max_new_tokens": 24, "dpo.samples": 2, "dpo.passes": 1,
    # two of the default's three iterations: a chained one is all the pipeline tests need (time on 2 cores)
    "dpo.iterations": {"iter1": {"init": "models/sft"}, "iter2": {"init": "models/dpo/iter1"}},
}


def curves(live: Path) -> dict[str, dict[int, float]]:
    """A run's dvclive curves (`live`: its curves directory, or the plots/metrics under it) by name: step -> value."""
    import csv

    root = live / "plots" / "metrics" if (live / "plots").is_dir() else live
    return {f.relative_to(root).with_suffix("").as_posix():
            {int(r["step"]): float(r[f.stem]) for r in csv.DictReader(f.open(), delimiter="\t")}
            for f in root.rglob("*.tsv")}


def assert_per_kind(curve: dict, kinds, steps: int, names=("chosen", "rejected", "margins", "accuracies")) -> None:
    """Logged every step, each kind's curves hold the steps of its blocks (together: every step once) with the
    step's own loss and rewards."""
    assert sorted(curve["train/loss"]) == list(range(1, steps + 1))
    mine = [set(curve[f"train/{k}_loss"]) for k in kinds]
    assert all(mine) and sum(map(len, mine)) == steps and set().union(*mine) == set(curve["train/loss"])
    for k in kinds:
        assert all(abs(curve["train/loss"][t] - v) <= 1e-5 * abs(v) for t, v in curve[f"train/{k}_loss"].items())
        for name in names:
            assert set(curve[f"rewards/{k}/{name}"]) == set(curve[f"train/{k}_loss"]), (k, name)
            assert all(abs(curve[f"rewards/{name}"][t] - v) <= 1e-6 * max(1.0, abs(v))
                       for t, v in curve[f"rewards/{k}/{name}"].items()), (k, name)


def set_key(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree[part]
    assert leaf in tree, dotted  # the override must name a real key
    tree[leaf] = value


def sh(cmd: str, cwd: Path, **extra_env: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "", **extra_env}
    out = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout + out.stderr


def copy_repo(dst: Path, overrides: dict | None = None) -> Path:
    """The tracked and untracked-but-not-ignored files of this checkout, TINY params (and `overrides`), as a
    new git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        # not the reference run's outputs and lock: the copy runs its own (TINY) pipeline
        if (REPO / f).is_file() and not f.startswith(("data/", "models/", "metrics/", "dvc.lock")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for k, v in {**TINY, **(overrides or {})}.items():
        set_key(params, k, v)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git init -q && git add -A && git commit -qm init", dst)
    return dst


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# What a sandboxed, offline headless Chromium needs (as root; no background connections to a closed network).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000", "--window-size=1400,2400"]


# --- Markdown ---------------------------------------------------------------------------------------------------
def prose(text):
    """The text without fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", text, flags=re.S)


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)


def links(path):
    text = prose(path.read_text(encoding="utf-8"))
    return LINK.findall(text) + REF_DEF.findall(text)
