"""Phase 2's stages, top to bottom: `dpo-sample` (the student's own chains -> preference pairs, pairs.py) and
`dpo-train` (one DPO iteration, spec 6.3), each a plain function behind one `tinythinker` command.

`dpo_train` runs on the DPO trainer registered for the student's family (trainers.py: dpo_seq2seq.py for T5,
dpo_causal.py for a decoder-only student on TRL) and the training engine (student/engine.py), with the same schedule,
validation and metric names for both. Training interleaves recall and analyze pairs (and summarize pairs, where
`dpo.stage_type` has them) with the curriculum sampler (spec 6.3 intervals, which count optimizer steps of
batch_size x gradient_accumulation_steps x processes pairs: N processes, or k accumulated micro-batches, make the
same passes over the pairs in 1/N (1/k) of the steps and validate at the same points in data terms) and validates
with the full greedy chain; the best of the starting model and every evaluated step is the output (the starting
model wins ties, so an iteration never makes the student worse on validation).
"""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from .. import protocol as P
from ..io import read_jsonl, write_json, write_jsonl
from ..params import Params, to_dict
from ..paths import Paths
from ..protocol import PAIR_FIELDS, PAIR_KINDS, read_questions
from ..lm import distributed
from .pairs import SampledPairs, iteration_init, iteration_seed, pair_kinds, sample_pairs, teacher_chains


def dpo_sample(params: Params, paths: Paths, iteration: str) -> dict:
    """Sample, build the pairs, write them (main process). Under several processes (`launcher`) each samples
    its share of the chains with its own copy of the model and its own seed; pairs are built from all of them."""
    from transformers import set_seed

    from ..lm.model import check_checkpoint, load_student

    init = paths.root / iteration_init(params, iteration)
    if params.sft.stage_type != "recall_analyze_summarize":
        # Self-reflection ranks the student's own recall/analyze chains; an ablated student has none, so
        # its DPO iterations keep the SFT model (dpo-train copies it when there are no pairs).
        metrics = {"questions": 0, "questions_with_pairs": 0, **{f"{k}_pairs": 0 for k in PAIR_KINDS}, "skipped": 1}
        return _write_pairs(paths, iteration, SampledPairs([], [], [], [], 0), metrics)
    check_checkpoint(init, f"dpo.iterations.{iteration}.init", tokenizer=False)  # missing or unreadable: one line
    questions = read_questions(paths.sft_data / "train_questions.jsonl")
    k = params.dpo.max_questions
    if k is not None and k < len(questions):  # a fresh seeded subset each iteration, in file order
        keep = set(random.Random(f"{params.seed}/{iteration}/questions").sample(range(len(questions)), k))
        questions = [q for i, q in enumerate(questions) if i in keep]
    teacher = teacher_chains(paths)
    with distributed.replicas():
        model, tokenizer = load_student(params, paths, init, f"dpo.iterations.{iteration}.init")
    model.to(distributed.state().device)
    set_seed(distributed.rank_seed(iteration_seed(params.seed, iteration)))
    got = sample_pairs(params, model, tokenizer, questions, teacher, random.Random(f"{params.seed}/{iteration}"),
                       iteration)
    # Only the pairs this stage type trains on are written; dpo-train trains on whatever the files hold.
    written = got if "recall" in pair_kinds(params.dpo.stage_type) else replace(got, recall=[])
    return _write_pairs(paths, iteration, written, _sample_metrics(questions, got, written))


def _sample_metrics(questions: list[dict], got: SampledPairs, written: SampledPairs) -> dict:
    from ..lm.chain import accuracy

    return {"questions": len(questions),
            "questions_with_pairs": len({p["qid"] for k in PAIR_KINDS for p in written.of(k)}),
            **{f"{k}_pairs": len(written.of(k)) for k in PAIR_KINDS},
            "analyzed_recalls": got.analyzed,
            "chosen_from_teacher": sum(p["teacher"] for p in got.recall),
            "sample_accuracy": accuracy(got.chains)}


def _write_pairs(paths: Paths, iteration: str, got: SampledPairs, metrics: dict) -> dict:
    if distributed.is_main():
        for k in PAIR_KINDS:
            write_jsonl(paths.pairs(iteration, k), [{f: p[f] for f in PAIR_FIELDS} for p in got.of(k)])
        write_json(paths.metric(f"dpo/{iteration}_pairs"), metrics)
    return metrics


def dpo_train(params: Params, paths: Paths, iteration: str, stop_after: int | None = None) -> dict:
    """Train one iteration; write models/dpo/<iteration> and metrics/dpo/<iteration>.json. `stop_after` interrupts
    after that many steps (tests of resuming): checkpoints stay, nothing else is written, and a later call with the
    same inputs resumes."""
    from ..lm.chain import validation_chain
    from ..lm.engine import START, Run
    from ..lm.model import check_checkpoint, family, load_student
    from .reference import ReferencePass, resume_files
    from .schedule import batch_sampler, schedule_intervals, training_args
    from .trainers import trainer_for

    init, what = paths.root / iteration_init(params, iteration), f"dpo.iterations.{iteration}.init"
    check_checkpoint(init, what, tokenizer=False)  # missing or unreadable: one line
    pairs = {k: read_jsonl(paths.pairs(iteration, k), PAIR_FIELDS) for k in PAIR_KINDS}
    sizes, d = {k: len(v) for k, v in pairs.items()}, params.dpo
    valid, chain_kwargs = read_questions(paths.sft_data / "valid.jsonl"), validation_chain(params)
    run = Run(params, paths, f"dpo/{iteration}", "dpo")
    # spec 6.3: intervals count optimizer steps of batch x n_gpu pairs (x gradient_accumulation_steps)
    intervals = schedule_intervals(sizes["recall"], sizes["analyze"],
                                   d.batch_size * d.gradient_accumulation_steps * run.processes, sizes["summarize"])
    kind = family(params, init, what)
    run.settle()  # TF32 and precision before the first forward pass: start validation and reference log-probs
    if not intervals:  # spec 9.21: nothing to learn from; the starting model passes through unchanged
        return _pass_through(params, paths, run, init, sizes, valid, chain_kwargs)
    trainer_kind = trainer_for(kind)
    # The model after the arguments (ZeRO-3 / FSDP memory-efficient loading, distributed.py)
    args = training_args(run, params, intervals, trainer_kind.arguments(params))
    model, tokenizer = load_student(params, paths, init, what)
    data = trainer_kind.train_data(params, model, tokenizer, pairs)
    inputs = [p for p in init.rglob("*") if p.is_file()] + [paths.pairs(iteration, k) for k in PAIR_KINDS]
    resume = run.resume(_fingerprint(params, paths, inputs, run.processes), keep=[START] + resume_files(trainer_kind))
    reference = [] if trainer_kind.OWN_REFERENCE else [
        ReferencePass(run.checkpoints, trainer_kind, data, tokenizer.pad_token_id, d.batch_size, run.precision)]
    callbacks = run.callbacks(stop_at=stop_after, validate_start=(tokenizer, valid, chain_kwargs), before=reference)
    trainer = trainer_kind.build_trainer(params, model, tokenizer, data, valid, chain_kwargs, args=args,
                                         batch_sampler=batch_sampler(params, sizes, intervals, args),
                                         callbacks=callbacks)
    if not run.train(trainer, resume):
        return {"steps": trainer.state.global_step}  # interrupted on purpose
    metrics, better = _outcome(trainer.state, run.start_accuracy, sizes)
    return run.complete(metrics, paths.dpo_model(iteration), trainer=trainer if better else None, family=kind,
                        copy_of=None if better else init)


def _fingerprint(params: Params, paths: Paths, inputs: list[Path], processes: int) -> str:
    """What a resumed iteration must share with the interrupted one: its params, the bytes of its inputs (the
    starting model, the pairs, the validation questions) and the number of processes (the schedule depends on it)."""
    from ..lm.engine import fingerprint

    g = params.generation
    dpo = {k: v for k, v in to_dict(params.dpo).items() if k != "iterations"}  # adding one must not restart
    keys = [params.seed, dpo, g.batch_size, g.max_new_tokens, params.sft.stage_type, params.sft.max_source_length,
            processes]
    return fingerprint(keys, inputs + [paths.sft_data / "valid.jsonl"], paths.root)


def _outcome(state, start_accuracy: float, sizes: dict[str, int]) -> tuple[dict, bool]:
    """(metrics, whether a step beat the starting model): the best of the start and every evaluated step."""
    metrics = {"valid_accuracy": start_accuracy, "start_valid_accuracy": start_accuracy, "best_step": 0,
               "steps": state.global_step, **P.pair_counts(sizes)}
    train_logs = [e for e in state.log_history if "rewards/margins" in e]
    metrics |= {k: train_logs[-1][k] for k in P.REWARD_KEYS if train_logs}
    better = state.best_metric is not None and state.best_metric > start_accuracy
    if better:
        metrics |= {"valid_accuracy": state.best_metric, "best_step": state.best_global_step}
    return metrics, better


def _pass_through(params: Params, paths: Paths, run, init: Path, sizes: dict[str, int], valid: list[dict],
                  chain_kwargs: dict) -> dict:
    """An iteration without pairs: its output is the starting model, validated as the trainer would."""
    from ..lm.engine import validate
    from ..lm.model import load_student

    iteration = run.name.split("/", 1)[1]
    with distributed.replicas():
        model, tokenizer = load_student(params, paths, init, f"dpo.iterations.{iteration}.init")
    model.to(distributed.state().device)
    start = validate(model, tokenizer, valid, chain_kwargs, run.precision)
    metrics = {"valid_accuracy": start, "start_valid_accuracy": start, "best_step": 0, "steps": 0,
               **P.pair_counts(sizes), "skipped": 1}
    run.log_points({0: {"eval_accuracy": start}})
    return run.complete(metrics, paths.dpo_model(iteration), copy_of=init)
