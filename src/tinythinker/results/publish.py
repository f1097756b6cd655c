"""Stage `publish`: models/final, the pipeline's final model with a Hugging Face model card; `--push` uploads it.

The final model is the last row of `report`'s metrics/iterations.json (the last DPO iteration, or the SFT model).
Its directory is copied with a README.md whose YAML front matter (base model, dataset, metrics as a model-index)
and body (method, teacher, accuracies of every model of the run, key params) come from params.yaml and metrics/
only, so the card is a deterministic DVC output. Uploading is a separate, explicit step: `tinythinker publish
--push user/name` sends models/final as it is to the Hub, with the token from $HF_TOKEN only.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from .. import protocol as P
from ..data.tasks import get_task
from ..io import DataError, atomic_path
from ..params import Params, to_dict
from ..paths import Paths

# The params the card reports (dvc.yaml lists the same under the stage's params).
KEY_PARAMS = ("seed", "dataset.name", "dataset.limit", "student.model", "student.revision", "teacher.backend",
              "teacher.model", "teacher.samples", "teacher.rounds", "teacher.temperature", "sft.stage_type",
              "sft.batch_size", "sft.gradient_accumulation_steps", "sft.learning_rate", "sft.epochs",
              "sft.interval", "sft.precision", "dpo.stage_type", "dpo.samples", "dpo.max_questions", "dpo.beta",
              "dpo.loss_type", "dpo.loss_weights", "dpo.learning_rate", "dpo.batch_size", "dpo.passes",
              "dpo.precision", "dpo.iterations")
PAPER = ("TinyThinker: Distilling Reasoning through Coarse-to-Fine Knowledge Internalization with "
         "Self-Reflection (Piao & Park, NAACL 2025)")


class PublishError(DataError):
    """Nothing to publish, no token, or the Hub refused; one line for the CLI."""


def _read(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishError(f"{path}: no such file (run `dvc repro` up to the report stage first)") from None
    except json.JSONDecodeError as e:
        raise PublishError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None


def _param(params: Params, dotted: str):
    node = to_dict(params)
    for part in dotted.split("."):
        node = node[part]
    return node


def _hub_id(model: str) -> str | None:
    """The Hub id of a student, None for an embedded one or a local directory."""
    return None if model.startswith("embedded") or Path(model).exists() or model.count("/") != 1 else model


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _count(n, noun: str) -> str:
    """`1 epoch`, `2 epochs`, `0.5 epochs`: a number with its noun, plural unless the number is exactly one."""
    return f"{n:g} {noun}" if n == 1 else f"{n:g} {noun}s"


# What the student answers, per dataset: a noun phrase that already ends in "questions".
QUESTIONS = {"synthetic": "closed-world category questions (the project's embedded synthetic task)",
             "csqa": "CommonsenseQA commonsense questions", "obqa": "OpenBookQA science questions",
             "strategyqa": "StrategyQA yes/no questions"}


def _questions(name: str, description: str) -> str:
    """The dataset's questions as a noun phrase: "OpenBookQA science questions"; for a task without an entry the
    description's name ("Foo (v2), 4-way ..." -> "Foo questions"), never "... questions questions"."""
    if name in QUESTIONS:
        return QUESTIONS[name]
    head = description.split(",")[0].split(" (")[0].strip()
    return head if head.lower().endswith("questions") else f"{head} questions"


def _student(model: str, decoder_only: bool) -> str:
    """The opening noun phrase of the card, with its article: who the student is."""
    if model.startswith("embedded"):
        kind = "decoder-only" if decoder_only else "encoder-decoder (T5)"
        return f"A small {kind} student, built and pretrained by the pipeline itself,"
    return f"A student fine-tuned from `{model}`"


def _teacher(t, samples: int) -> str:
    """Who wrote the rationales: the project's offline teacher (no language model behind it) or a chat model."""
    if t.backend == "offline":
        who = ("the project's offline teacher (a program that writes rationales from the synthetic world's facts, "
               "with deliberate format faults and wrong facts; no language model)")
    else:
        who = f"`{t.model}` through an OpenAI-compatible chat API"
        if t.mode == "batch":
            who += " (Batch API)"
    return (f"{who}, {_count(samples, 'rationale')} per training question"
            + ("" if t.backend == "offline" else f" at temperature {t.temperature:g}")
            + ", each given the gold answer (rationalisation)")


def _architecture(params: Params, paths: Paths) -> tuple[str, bool]:
    """(model_type, decoder-only) of the final model, from its config as `student.model.family` reads it; before there
    is one (or for a card of a bare run), from the embedded student's name."""
    try:
        config = json.loads((final_model(paths) / "config.json").read_text())
    except (PublishError, OSError, ValueError):
        causal = params.student.model == "embedded-causal"
        return ("llama" if causal else "t5"), causal
    return str(config.get("model_type", "t5")), not config.get("is_encoder_decoder", False)


def _front_matter(params: Params, paths: Paths, name: str, test_acc) -> tuple[dict, bool]:
    """The card's YAML front matter (the Hub reads it) and whether the student is decoder-only."""
    task = get_task(params.dataset.name)
    base = _hub_id(params.student.model)
    dataset_id = task.hub.path if task.hub is not None else None
    model_type, decoder_only = _architecture(params, paths)
    meta: dict = {"library_name": "transformers",
                  "pipeline_tag": "text-generation" if decoder_only else "text2text-generation", "language": ["en"]}
    if base:
        meta["base_model"] = base
    if dataset_id:
        meta["datasets"] = [dataset_id]
    meta["tags"] = ["tinythinker", model_type, "distillation", "reasoning", "dpo", "multiple-choice"]
    if test_acc is not None:
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "multiple-choice", "name": "Multiple-choice question answering"},
            "dataset": {"type": dataset_id or params.dataset.name, "name": task.description},
            "metrics": [{"type": "accuracy", "value": round(test_acc, 2),
                         "name": "Test accuracy (greedy recall-analyze-summarize chain)"}]}]}]
    return meta, decoder_only


def _training(params: Params, samples: int) -> str:
    """The card's "How it was trained": the teacher, phase 1 and phase 2 as params set them."""
    t, s, d = params.teacher, params.sft, params.dpo
    loss = " + ".join(f"{w:g} x {lt}" for lt, w in zip(d.loss_type, d.loss_weights))
    tuned = "the student" if params.student.model.startswith("embedded") else f"`{params.student.model}`"
    return f"""- **Teacher:** {_teacher(t, samples)}.
- **Phase 1, reasoning acquisition:** curriculum fine-tuning of {tuned} on the stage type
  `{s.stage_type}`: blocks of {_count(s.interval, "recall step")}, {_count(s.interval, "analyze step")} per option
  and {_count(s.interval, "summarize step")}; batch {s.batch_size * s.gradient_accumulation_steps}, learning rate {s.learning_rate:g},
  {_count(s.epochs, "epoch")}, precision {s.precision}; the checkpoint with the best validation chain accuracy is kept.
- **Phase 2, self-reflection:** {_count(len(d.iterations), "iteration")} of DPO on chains the student samples itself,
  {_count(d.samples, "chain")} per training question (`{d.stage_type}` pairs), loss {loss},
  beta {d.beta:g}, learning rate {d.learning_rate:g}, batch {d.batch_size * d.gradient_accumulation_steps}; each
  iteration starts from (and is referenced to) the previous model and keeps its best validation checkpoint."""


def _key_params(params: Params) -> dict:
    key = {k: _param(params, k) for k in KEY_PARAMS}
    key["dpo.iterations"] = {k: v["init"] for k, v in key["dpo.iterations"].items()}
    if params.teacher.backend == "offline":  # the offline teacher is no model: teacher.model is not read
        del key["teacher.model"]
    return key


def _ci(row: dict) -> str:
    """The test accuracy's 95 % interval (metrics/iterations.json `test_ci95`; older metrics have none)."""
    bounds = row.get("test_ci95")
    return f"{_pct(bounds[0])}-{_pct(bounds[1])}" if bounds else "–"


def model_card(params: Params, paths: Paths) -> str:
    """README.md of models/final from params and metrics/iterations.json."""
    rows = _read(paths.metric("iterations"))
    final = rows[-1]
    task = get_task(params.dataset.name)
    name = f"tinythinker-{params.dataset.name}-{params.student.model.rsplit('/', 1)[-1]}"
    meta, decoder_only = _front_matter(params, paths, name, final["test_accuracy"])
    table = "\n".join(f"| {r['model']} | {_pct(r['valid_accuracy'])} | {_pct(r['test_accuracy'])} | {_ci(r)} |"
                      for r in rows)
    block = "<question>\n(A) <option> (B) <option> ..."
    limit = (f"\n**Smoke run:** every split was capped at {params.dataset.limit} questions (`dataset.limit`); "
             "these accuracies are not comparable to the paper's.\n" if params.dataset.limit else "")
    body = f"""
# {name}

{_student(params.student.model, decoder_only)} that answers {_questions(params.dataset.name, task.description)}
by reasoning in three steps, **recall → analyze → summarize**, distilled with the method of *{PAPER}*. Trained by
the TinyThinker DVC pipeline; this card is generated from its `params.yaml` and metrics.
{limit}
## Results

Accuracy (%) of the full greedy chain; the final model is **{final["model"]}**.

| model | validation | test | test, 95 % interval |
|---|---|---|---|
{table}

## How it was trained

{_training(params, params.teacher.samples or task.teacher.samples)}

## Usage

The model answers through three generations (greedy), each prompt built from the previous outputs:

```
recall:    {P.recall_prompt(block)!r}
analyze:   {P.analyze_prompt(block, "A", "<recall>")!r}   (once per option)
summarize: {P.summarize_prompt(block, "<recall>", {"A": "<analysis of A>", "B": "<analysis of B>"})!r}
answer:    the first match of {P.ANSWER_RE.pattern} in the summarize output
```

## Parameters

```yaml
{yaml.safe_dump(_key_params(params), sort_keys=False, default_flow_style=None).strip()}
```
"""
    return f"---\n{yaml.safe_dump(meta, sort_keys=False).strip()}\n---\n{body}"


def final_model(paths: Paths) -> Path:
    rows = _read(paths.metric("iterations"))
    name = rows[-1]["model"] if isinstance(rows, list) and rows and isinstance(rows[-1], dict) else None
    model = paths.sft_model if name == "sft" else paths.dpo_model(str(name))
    if name is None or not (model / "config.json").is_file():
        raise PublishError(f"{model}: no model (the last row of metrics/iterations.json names {name!r} "
                           "as the final model)")
    return model


def publish(params: Params, paths: Paths) -> Path:
    """Write models/final: the final model's files and its README.md model card."""
    source = final_model(paths)
    card = model_card(params, paths)
    with atomic_path(paths.final_model) as tmp:
        shutil.copytree(source, tmp)
        (tmp / "README.md").write_text(card)
    return paths.final_model


def push(paths: Paths, repo_id: str, private: bool = False) -> str:
    """Upload models/final to the Hub model repo `repo_id` (created if missing); returns the commit URL."""
    folder = paths.final_model
    if not ((folder / "README.md").is_file() and (folder / "config.json").is_file()):
        raise PublishError(f"{folder}: no model with a card to upload (run `dvc repro publish` first)")
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise PublishError("--push needs the HF_TOKEN environment variable (a Hugging Face write token); "
                           "nothing was uploaded")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, HTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   commit_message="Upload TinyThinker model and card")
    except (HTTPError, OSError, HFValidationError) as e:  # refused, unreachable, offline, a malformed repo id
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PublishError(f"{repo_id}: upload failed: {reason}") from None
    return str(getattr(commit, "commit_url", commit))
