"""Can the student read? What a finished run's models do with a label that points into a list.

    python3 experiments/reading.py [WORKSPACE] [--out experiments/results/reading-<name>.json]

Every step of the task reads: "For option C," must be answered with the thing after "(C)". Two measures:

- **lists**: each model (models/pretrained, models/sft, each DPO iteration) scores, for lettered lists of the world's
  things drawn here (2-5 items, seeded), the corpus's read-back "in the list (A) .. (B) .., item B is the ___" with
  every item of the list; read right when the asked item scores best (forced choice: chance is 1/length).
- **analyses**: in each model's test predictions, the share of analyses that name the option's own thing
  ("C is brerom" for "(C) brerom"), and the share of questions whose analyses all do;
- **where chains fail**: each test chain's first wrong step (recall without the asked category, an analysis naming
  another thing, a wrong category, a wrong verdict, or a summary that picks another option than the analyses'),
  with the summary's most common (right, picked) confusions.

WORKSPACE (default: this checkout) must hold a finished `dvc repro` of the synthetic task.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

OPTION = re.compile(r"\((\w)\) (.+?)(?= \(\w\) |$)")


def list_reading(model, tokenizer, things: list[str], n: int, seed: int) -> dict:
    """Forced-choice list reading (%) by list length."""
    import torch

    from tinythinker.data.synthetic import LABELS, LIST_READS
    from tinythinker.reflect.dpo_seq2seq import sequence_logps

    seq2seq = model.config.is_encoder_decoder
    rng, out = random.Random(seed), {}
    model.eval()
    for length in (2, 3, 4, 5):
        right = 0
        for _ in range(n):
            picks = rng.sample(things, length)
            at = rng.randrange(length)
            items = " ".join(f"({LABELS[i]}) {e}" for i, e in enumerate(picks))
            prompt = LIST_READS[0].format(items=items, l=LABELS[at], e="\0").split(" \0")[0]
            if seq2seq:  # the read-back is the one masked span
                x = tokenizer([f"{prompt} <extra_id_0>"] * length, return_tensors="pt")
                y = tokenizer([f"<extra_id_0> {e}." for e in picks], return_tensors="pt", padding=True).input_ids
                y[y == tokenizer.pad_token_id] = -100
                with torch.no_grad():
                    logits = model(**x, labels=y).logits
            else:  # the continuation's tokens, after the prompt's (padded on the right whatever the tokenizer's side)
                width = len(tokenizer(prompt).input_ids)
                x = tokenizer([f"{prompt} {e}." for e in picks], return_tensors="pt", padding=True, padding_side="right")
                y = x.input_ids.masked_fill(x.attention_mask == 0, -100)
                y[:, :width] = -100
                with torch.no_grad():
                    logits = model(**x).logits[:, :-1]
                y = y[:, 1:]
            right += int(sequence_logps(logits, y)[0].argmax()) == at
        out[str(length)] = round(100.0 * right / n, 1)
    return out


def analysis_reading(predictions: Path, questions: dict[str, dict]) -> dict:
    """Share (%) of analyses naming their own option's thing, and of questions whose analyses all do."""
    analyses = whole = rows = 0
    right = 0
    for line in predictions.read_text().splitlines():
        p = json.loads(line)
        things = dict(OPTION.findall(questions[p["qid"]]["block"].split("\n")[-1]))
        ok = [a.removeprefix(f"{l} is ").split(",")[0].strip(". ") == things.get(l)
              for l, a in p["analyses"].items()]
        analyses, right, rows, whole = analyses + len(ok), right + sum(ok), rows + 1, whole + (bool(ok) and all(ok))
    return {"analyses_naming_their_thing": round(100.0 * right / max(1, analyses), 1),
            "questions_all_named": round(100.0 * whole / max(1, rows), 1)}


def failing_steps(predictions: Path, raw: dict[str, dict]) -> dict:
    """Count of test chains by their first wrong step, and the summarize step's (answer, picked) confusions."""
    steps, confusions = Counter(), Counter()
    for line in predictions.read_text().splitlines():
        p = json.loads(line)
        q, analyses = raw[p["qid"]], p["analyses"] or {}
        kinds, asked = q["meta"]["kinds"], q["meta"]["category"]
        text = {c["label"]: c["text"] for c in q["choices"]}
        fits = [l for l, a in analyses.items() if ", not a" not in a]
        if p["prediction"] == p["gt"]:
            step = "right"
        elif asked not in (p["recall"] or ""):
            step = "recall"
        elif len(analyses) < len(text) or not all(a.startswith(f"{l} is {text[l]}") for l, a in analyses.items()):
            step = "reading"
        elif not all(re.search(rf"\ban? {kinds[l]}\b", a) for l, a in analyses.items()):
            step = "category"
        elif fits != [p["gt"]]:
            step = "verdict"
        else:
            step = "summarize"
            confusions[f"{p['gt']}->{p['prediction']}"] += 1
        steps[step] += 1
    return {"first_wrong_step": dict(steps.most_common()), "summarize_confusions": dict(confusions.most_common(4))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workspace", nargs="?", default=".")
    ap.add_argument("--lists", type=int, default=100, help="lists per length")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from tinythinker.data.synthetic import world
    from tinythinker.params import load
    from tinythinker.paths import Paths

    ws = Paths(Path(a.workspace).resolve())
    params = load(ws.params)
    if params.dataset.name != "synthetic":
        sys.exit(f"{ws.params}: dataset.name is {params.dataset.name!r}; the reading bench needs the synthetic task")
    things = [e for es in world(params.dataset.synthetic).values() for e in es]
    questions = {q["qid"]: q for q in map(json.loads, (ws.sft_data / "test.jsonl").read_text().splitlines())}
    raw = {q["id"]: q for q in map(json.loads, (ws.raw / "test.jsonl").read_text().splitlines())}
    models = {"pretrained": ws.pretrained_model, "sft": ws.sft_model} | {
        it: ws.dpo_model(it) for it in params.dpo.iterations}
    report = {"workspace": str(ws.root), "seed": params.seed, "lists_per_length": a.lists, "models": {}}
    for name, path in models.items():
        if not (path / "config.json").exists():
            continue
        cls = AutoModelForSeq2SeqLM if json.loads((path / "config.json").read_text()).get(
            "is_encoder_decoder") else AutoModelForCausalLM
        model, tokenizer = cls.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        row = {"lists": list_reading(model, tokenizer, things, a.lists, params.seed)}
        predictions = ws.prediction(f"test/{name}") if name != "pretrained" else None
        if predictions is not None and predictions.exists():
            row |= analysis_reading(predictions, questions) | failing_steps(predictions, raw)
        report["models"][name] = row
        print(name, json.dumps(row), flush=True)
    text = json.dumps(report, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
