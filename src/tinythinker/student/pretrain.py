"""Stage `pretrain`: the embedded student learns its world before it learns the task (docs/embedded-task.md).

The paper distils into a pretrained T5, which holds the facts the recall and analyze steps bring out; an embedded
student built from random weights holds none. So it is first trained on data/corpus with its family's pretraining
objective (seq2seq: T5 span corruption; causal: next-token prediction) on the stock `Trainer`, for
`student.pretrain.steps`, and `sft` starts from models/pretrained. `steps: 0` saves the freshly initialised
student (from scratch). A Hub or local student is pretrained already: the stage records which one and `sft` loads
it as before. The probe (data/corpus/probe.jsonl: each fact's wording cut before its category) measures, before
and after, the share of facts the student completes right, the held-out things' apart.
"""
from __future__ import annotations

import shutil

from ..io import DataError, atomic_path, read_jsonl, replace_dir, write_json
from ..params import Params
from ..paths import Paths
from ..protocol import PROBE_FIELDS, TEXT_FIELDS
from .chain import Decoding, generate
from .model import EMBEDDED, build_initial, family

SOURCE = "pretrained.json"  # what models/pretrained holds for a Hub or local student: which model sft loads


def _first_word(text: str) -> str:
    """The completion's first word, past an article (a masked span may take the "a" before the category with it)."""
    words = [w.strip(".,:;") for w in text.split()]
    while words and words[0] in ("a", "an", "the"):
        words.pop(0)
    return words[0] if words else ""


def probe(model, tokenizer, rows: list[dict], kind, batch_size: int) -> dict:
    """Share (%) of probe rows whose greedy completion starts with the answer: all, and the held-out things'."""
    if not rows:
        return {}
    outs = generate(model, tokenizer, [kind.probe_prompt(r["prompt"]) for r in rows],
                    Decoding(max_new_tokens=24), batch_size)  # room to restate the sentence
    # a denoising target restates the sentence (sentence_targets): past the probe's own words comes its completion
    right = [_first_word(o.removeprefix(r["prompt"])) == r["answer"] for o, r in zip(outs, rows)]
    held = [ok for ok, r in zip(right, rows) if r["held_out"]]
    score = lambda xs: round(100.0 * sum(xs) / len(xs), 2) if xs else None  # noqa: E731
    return {"probe_accuracy": score(right), "probe_held_out_accuracy": score(held)}


def pretrain(params: Params, paths: Paths) -> dict:
    p = params.student.pretrain
    if params.student.model not in EMBEDDED:
        source = {"model": params.student.model, "revision": params.student.revision}
        with atomic_path(paths.pretrained_model) as tmp:
            tmp.mkdir()
            write_json(tmp / SOURCE, source)
        with atomic_path(paths.curves("pretrain")) as tmp:  # no curve, but the stage's plots directory
            (tmp / "plots" / "metrics").mkdir(parents=True)
        metrics = {"steps": 0, "pretrained": params.student.model}
        write_json(paths.metric("pretrain"), metrics)
        return metrics

    import torch
    from transformers import Trainer, TrainingArguments

    from .training import trainer_callbacks, trainer_kwargs

    kind = family(params)
    model, tokenizer = build_initial(params, paths)
    text = [r["text"] for r in read_jsonl(paths.corpus / "text.jsonl", TEXT_FIELDS)]
    if not text:
        raise DataError(f"{paths.corpus / 'text.jsonl'}: an empty pretraining corpus")
    rows = read_jsonl(paths.corpus / "probe.jsonl", PROBE_FIELDS)
    batch = params.generation.batch_size
    before = probe(model, tokenizer, rows, kind, batch)
    metrics: dict = {"steps": p.steps, "sentences": len(text)}
    if p.steps:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cuda = torch.cuda.is_available()
        work = paths.checkpoints / "pretrain"
        shutil.rmtree(work, ignore_errors=True)  # nothing to resume: the stage is short
        args = TrainingArguments(
            output_dir=str(work), max_steps=p.steps, per_device_train_batch_size=p.batch_size,
            learning_rate=p.learning_rate, lr_scheduler_type="cosine", warmup_steps=p.warmup_ratio,
            seed=params.seed, logging_steps=max(1, min(50, p.steps // 20)), logging_first_step=True,
            save_strategy="no", remove_unused_columns=False, disable_tqdm=False, dataloader_pin_memory=cuda,
            use_cpu=not cuda, **trainer_kwargs(params, paths, "sft", "pretrain") | {
                "gradient_accumulation_steps": 1, "activation_checkpointing": False})
        _, LiveCallback = trainer_callbacks()
        trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": i} for i in ids],
                          data_collator=kind.pretrain_collator(params, tokenizer),
                          callbacks=[LiveCallback(paths.curves_work("pretrain"))])
        out = trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        metrics |= {"train_loss": out.training_loss, "first_loss": losses[0], "last_loss": losses[-1]}
        model = trainer.model
    after = probe(model, tokenizer, rows, kind, batch)
    metrics |= {f"{k}_before": v for k, v in before.items()} | after
    _log_probe(paths, before, after, p.steps)
    with atomic_path(paths.pretrained_model) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    replace_dir(paths.curves_work("pretrain"), paths.curves("pretrain"))
    shutil.rmtree(paths.checkpoints / "pretrain", ignore_errors=True)
    write_json(paths.metric("pretrain"), metrics)
    return metrics


def _log_probe(paths: Paths, before: dict, after: dict, steps: int) -> None:
    """The probe before (step 0) and after pretraining beside the loss curve (alone for `steps: 0`, so the curves
    directory always holds a plot)."""
    from dvclive import Live

    live = Live(dir=str(paths.curves_work("pretrain")), resume=bool(steps), dvcyaml=False, save_dvc_exp=False)
    for step, values in ((0, before), (steps, after)) if steps else ((0, before),):
        live.step = step
        for k, v in values.items():
            if v is not None:
                live.log_metric(k, v)
    live.make_summary()
    live.end()
    paths.curves_work("pretrain").joinpath("plots", "metrics").mkdir(parents=True, exist_ok=True)
