"""The student's stages, top to bottom: `tokenizer`, `pretrain`, `sft` (phase 1) and `test`.

Each is a plain function `fn(params, paths, ...)` behind one `tinythinker` command (cli.py). What they train on is
the student family's (family.py: seq2seq / causal); how a training run checkpoints, resumes, logs its curves and
moves its outputs in is the engine's (engine.py); the chain that validates and tests is chain.py.

`sft` (spec 5) runs a stock trainer (HF's Seq2SeqTrainer for a T5 student, TRL's SFTTrainer for a decoder-only one)
with two changes (`training.CurriculumChainMixin`): the training batches come from the curriculum batch sampler
(blocks of recall / analyze / summarize, spec 5.4), and evaluation is the full greedy chain on the validation
questions (spec 5.5) scored by answer accuracy. The best checkpoint by that accuracy (ties keep the earlier one)
becomes models/sft; a killed run resumes where it stopped as long as params and data are unchanged.

`test` (spec 7): `generation.strategy: sample` samples recall and analyze (temperature / top_k / top_p) and keeps
summarize greedy, as the original does; `generation.times` > 1 repeats the test set and adds a majority vote over
the runs (self-consistency). Greedy runs are identical, so a greedy chain is generated once and repeated.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .. import protocol as P
from ..io import DataError, atomic_path, read_jsonl, write_json, write_jsonl
from ..params import GenerationParams, Params, check_name, to_dict
from ..paths import Paths
from ..protocol import PROBE_FIELDS, STAGE_FIELDS, TEXT_FIELDS, read_questions
from ..lm import distributed
from ..lm.chain import Decoding, accuracy, majority_vote, run_chain, validation_chain
from ..lm.curriculum import CurriculumBatchSampler, eval_steps, sft_intervals
from ..lm.family import EMBEDDED
from ..lm.model import build_initial, corpus, family, is_local, load_pretrained, load_student, train_tokenizer
from .pretrain import SOURCE, probe


def tokenizer_stage(params: Params, paths: Paths) -> None:
    """The embedded student's tokenizer trained on its corpus and the stage datasets, or the named model's."""
    kind = family(params)
    if params.student.model in EMBEDDED:
        tokenizer = train_tokenizer(corpus(paths), params.student.embedded.vocab_size, kind)
    else:
        from transformers import AutoTokenizer
        m = params.student.model
        tokenizer = kind.prepare_tokenizer(load_pretrained(AutoTokenizer, m, "student.model", is_local(m),
                                                           revision=params.student.revision))
    with atomic_path(paths.tokenizer) as tmp:
        tokenizer.save_pretrained(tmp)


def pretrain(params: Params, paths: Paths) -> dict:
    """The embedded student on data/corpus for `student.pretrain.steps` (pretrain.py), the fact probe before and
    after; a Hub or local student is pretrained already: models/pretrained names it."""
    from transformers import Trainer

    from ..lm.engine import Run

    p = params.student.pretrain
    if params.student.model not in EMBEDDED:
        return _name_pretrained(params, paths)
    kind = family(params)
    model, tokenizer = build_initial(params, paths)
    text = [r["text"] for r in read_jsonl(paths.corpus / "text.jsonl", TEXT_FIELDS)]
    if not text:
        raise DataError(f"{paths.corpus / 'text.jsonl'}: an empty pretraining corpus")
    rows = read_jsonl(paths.corpus / "probe.jsonl", PROBE_FIELDS)
    before = probe(model, tokenizer, rows, kind, params.generation.batch_size)
    metrics: dict = {"steps": p.steps, "sentences": len(text)}
    run = Run(params, paths, "pretrain", "sft")
    if p.steps:
        shutil.rmtree(run.checkpoints, ignore_errors=True)  # nothing to resume: the stage is short
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        args = run.arguments(max_steps=p.steps, per_device_train_batch_size=p.batch_size,
                             learning_rate=p.learning_rate, warmup_steps=p.warmup_ratio,
                             log_every=max(1, min(50, p.steps // 20)),
                             overrides={"gradient_accumulation_steps": 1, "activation_checkpointing": False})
        trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": i} for i in ids],
                          data_collator=kind.pretrain_collator(params, tokenizer), callbacks=run.callbacks())
        run.train(trainer)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        metrics |= {"train_loss": run.train_loss, "first_loss": losses[0], "last_loss": losses[-1]}
        model = trainer.model
    after = probe(model, tokenizer, rows, kind, params.generation.batch_size)
    metrics |= {f"{k}_before": v for k, v in before.items()} | after
    # the probe before (step 0) and after beside the loss curve (alone for `steps: 0`)
    probes = {0: before, p.steps: after} if p.steps else {0: before}
    run.log_points({step: {f"eval_{k}": v for k, v in values.items()} for step, values in probes.items()},
                   resume=bool(p.steps))
    return run.complete(metrics, paths.pretrained_model,
                        save=lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))


def _name_pretrained(params: Params, paths: Paths) -> dict:
    """A Hub or local student: models/pretrained names it (for sft to load) and the curves directory is empty."""
    with atomic_path(paths.pretrained_model) as tmp:
        tmp.mkdir()
        write_json(tmp / SOURCE, {"model": params.student.model, "revision": params.student.revision})
    with atomic_path(paths.curves("pretrain")) as tmp:  # no curve, but the stage's plots directory
        (tmp / "plots" / "metrics").mkdir(parents=True)
    metrics = {"steps": 0, "pretrained": params.student.model}
    write_json(paths.metric("pretrain"), metrics)
    return metrics


def stage_data(params: Params, paths: Paths) -> dict[str, list[dict]]:
    """The stage datasets of sft.stage_type, in chain order."""
    out = {}
    for stage in P.STAGES[params.sft.stage_type]:
        data = read_jsonl(paths.stage_file(params.sft.stage_type, stage), STAGE_FIELDS)
        if not data:
            raise DataError(f"{paths.stage_file(params.sft.stage_type, stage)}: empty stage dataset")
        out[stage] = data
    return out


def hold_out(stages: dict[str, list[dict]], k: int, seed: int) -> tuple[dict, dict]:
    """(training rows, held-out rows) by stage: every row of `k` training questions (drawn with `seed` from those of
    the first stage) moves to the held-out side, so eval loss is measured on questions SFT never saw."""
    import random

    if not k:
        return stages, {}
    qids = list(dict.fromkeys(r["qid"] for r in next(iter(stages.values()))))
    if k >= len(qids):
        raise DataError(f"sft.eval_questions: {k} held out of {len(qids)} training questions leaves none to train on")
    held = set(random.Random(f"{seed}/eval_questions").sample(qids, k))
    return ({s: [r for r in rows if r["qid"] not in held] for s, rows in stages.items()},
            {s: [r for r in rows if r["qid"] in held] for s, rows in stages.items()})


MAX_CUT_SHARE = 0.05  # more of a stage's rows cut than this (and more than one), the run would learn fragments


def over_limits(params: Params, paths: Paths, stages: dict[str, list[dict]], tokenizer) -> dict:
    """How many stage inputs and targets are longer (in tokens, special ones included) than `sft.max_source_length`
    and `sft.max_target_length`, which cut them. A few are said and counted; more than MAX_CUT_SHARE of a stage's
    rows (and more than one) is a DataError naming the param and the file: the model would train on fragments."""
    s, out = params.sft, {"inputs_over_max_source_length": 0, "targets_over_max_target_length": 0}
    for stage, rows in stages.items():
        for field, key, most in (("input", "inputs_over_max_source_length", s.max_source_length),
                                 ("target", "targets_over_max_target_length", s.max_target_length)):
            sizes = [len(ids) for ids in tokenizer([r[field] for r in rows])["input_ids"]]
            cut = sum(n > most for n in sizes)
            name = f"sft.{key.split('_over_')[1]}"
            where = paths.stage_file(s.stage_type, stage)
            if cut > max(1, MAX_CUT_SHARE * len(rows)):
                raise DataError(f"{where}: {name}={most} cuts {cut} of {len(rows)} {field}s (the longest is "
                                f"{max(sizes)} tokens): raise {name}")
            if cut and distributed.is_main():
                print(f"warning: {name}={most} cuts {cut} of {len(rows)} {field}s of {where} (the longest is "
                      f"{max(sizes)} tokens); counted in metrics/sft.json", file=sys.stderr)
            out[key] += cut
    return out


def sft_fingerprint(params: Params, paths: Paths, processes: int = 1) -> str:
    """Everything a resumed sft run must share with the interrupted one: its params, its input files and the
    number of processes (a step's batch and so the schedule depend on it)."""
    from ..lm.engine import fingerprint

    g = params.generation
    keys = {k: to_dict(getattr(params, k)) for k in ("seed", "student", "sft")}
    keys["generation"] = [g.batch_size, g.max_new_tokens]  # what validation uses; as in dvc.yaml
    keys["processes"] = processes
    files = sorted(paths.sft_data.glob(f"{params.sft.stage_type}/*.jsonl")) + [paths.sft_data / "valid.jsonl"]
    files += [p for d in (paths.tokenizer, paths.pretrained_model) for p in d.rglob("*") if p.is_file()]
    return fingerprint(keys, files, paths.root)


def sft(params: Params, paths: Paths, max_steps: int | None = None) -> dict:
    """Train, keep the best checkpoint by validation chain accuracy, write models/sft and metrics/sft.json.
    `max_steps` stops early (tests: an interrupted run); the schedule still spans the full run, so a later call
    resumes exactly."""
    from ..lm.engine import Run, resumed_step
    from ..lm.training import sft_trainer

    s = params.sft
    procs = distributed.state()  # the process group before anything else (see distributed.py)
    valid = read_questions(paths.sft_data / "valid.jsonl")
    num_options = max(len(q["options"]) for q in valid)
    eval_every = eval_steps(s.eval_every, s.stage_type, s.interval, num_options)
    kind = family(params)
    run = Run(params, paths, "sft", "sft")
    args = run.arguments(lambda **fields: kind.sft_arguments(params, **fields), eval_every=eval_every,
                         log_every=max(1, min(10, eval_every // 4)), per_device_train_batch_size=s.batch_size,
                         learning_rate=s.learning_rate, num_train_epochs=s.epochs, warmup_steps=s.warmup_ratio,
                         weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm)
    # The model after the arguments: under ZeRO-3 they register the DeepSpeed config that makes loading build
    # the model partitioned, and FSDP's cpu_ram_efficient_loading needs the process group (distributed.py).
    model, tokenizer = load_student(params, paths)
    stages, held_out = hold_out(stage_data(params, paths), s.eval_questions, params.seed)
    cut = over_limits(params, paths, stages, tokenizer)
    rows, lengths = kind.sft_data(params, stages, tokenizer)
    # One optimizer step = batch_size x accumulation per process, all processes in the same stage block.
    sampler = CurriculumBatchSampler({stage: len(r) for stage, r in stages.items()},
                                     sft_intervals(s.stage_type, s.interval, num_options), s.batch_size, params.seed,
                                     lengths if s.group_by_length else None, s.gradient_accumulation_steps,
                                     num_replicas=procs.num_processes, rank=procs.process_index)
    resume = run.resume(sft_fingerprint(params, paths, procs.num_processes))
    trainer = sft_trainer(kind, params, model, tokenizer, rows, valid, held_out, args=args, batch_sampler=sampler,
                          chain_kwargs=validation_chain(params),
                          callbacks=run.callbacks(stop_at=max_steps, evaluate_at_end=True))
    resumed = {"resumed_from_step": resumed_step(resume)}
    if not run.train(trainer, resume):
        return {"train_steps": trainer.state.global_step} | resumed  # interrupted on purpose: no outputs
    state = trainer.state
    metrics = {"valid_accuracy": state.best_metric, "best_step": state.best_global_step,
               "train_steps": state.global_step, "train_loss": run.train_loss,
               "processes": trainer.accelerator.num_processes,
               "eval_questions": len({r["qid"] for rows in held_out.values() for r in rows}), **cut}
    return run.complete(metrics, paths.sft_model, trainer=trainer, family=kind) | resumed


def decodings(g: GenerationParams) -> tuple[Decoding, Decoding]:
    """(recall/analyze, summarize) decoding of a test run: sampled and greedy with `strategy: sample`, else greedy
    twice (the same object, which `test` takes for "one run is enough")."""
    greedy = Decoding(max_new_tokens=g.max_new_tokens)
    if g.strategy != "sample":
        return greedy, greedy
    return Decoding(do_sample=True, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                    max_new_tokens=g.max_new_tokens), greedy


def test(params: Params, paths: Paths, model_dir: Path, name: str) -> dict:
    """The chain on the test questions: accuracy per run (and the majority vote), predictions. Under several
    processes each generates its share with its own copy of the model; the main process writes."""
    check_name(name, "--name", nested=True)  # before minutes of generation: it becomes two output paths
    g = params.generation
    questions = read_questions(paths.sft_data / "test.jsonl")
    with distributed.replicas():  # load_student checks the directory before torch's import: fails in a second
        model, tokenizer = load_student(params, paths, Path(model_dir), "--model")
    import torch

    procs = distributed.state()  # generation only: every process holds full weights, so after loading is fine
    model.to(procs.device)
    sampled, greedy = decodings(g)
    # A greedy chain is generated once and repeated; sampled runs go through the chain together, so each
    # question's prompt is encoded once and its `times` recalls are drawn as one num_return_sequences call.
    copies = 1 if sampled is greedy else g.times
    torch.manual_seed(distributed.rank_seed(params.seed))  # a reproducible sample
    chains = distributed.map_sharded(
        lambda share: run_chain(model, tokenizer, share, stage_type=params.sft.stage_type, recall=sampled,
                                analyze=sampled, summarize=greedy, batch_size=g.batch_size,
                                desc=f"{name} x{copies}"), questions * copies)
    runs = [chains[t * len(questions):(t + 1) * len(questions)] for t in range(copies)] * (g.times // copies)
    accs = [accuracy(run) for run in runs]
    metrics = {"accuracy": sum(accs) / len(accs), "questions": len(questions)}
    if g.times > 1:
        metrics |= {f"accuracy_run_{t + 1}": a for t, a in enumerate(accs)}
        votes = majority_vote(runs)
        metrics["majority_accuracy"] = accuracy([{"prediction": v, "gt": q["gt"]} for v, q in zip(votes, questions)])
    if procs.is_main_process:
        write_jsonl(paths.prediction(name),
                    ({"qid": r["qid"], "run": t + 1, "recall": r["recall"], "analyses": r["analyses"],
                      "summary": r["summary"], "prediction": r["prediction"], "gt": r["gt"]}
                     for t, run in enumerate(runs) for r in run))
        write_json(paths.metric(name), metrics)
    return metrics
