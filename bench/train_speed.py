"""Training throughput: curriculum SFT and DPO steps as the pipeline runs them vs a stock Trainer set-up.

SFT. Ours: the curriculum batch sampler with length grouping inside each stage, dynamic padding (the sft stage's
trainer, `training.sft_trainer`). Stock: Seq2SeqTrainer's default random sampler and DataCollatorForSeq2Seq padding
to the longest in the batch (the original code's set-up), and the same with the Trainer's own length grouping
(`train_sampling_strategy="group_by_length"`), the standard option a user would reach for.
DPO. Ours: reference log-probs computed once up front (timed too), chosen+rejected in one forward pass.
Stock: the reference model held beside the policy and run every step, as TRL's DPOTrainer does by default.
Both make `dpo.passes` passes over the same pairs, as an iteration of the pipeline does.
Each variant runs in its own process so its peak memory is its own; tokens are real (non-pad) tokens of
encoder inputs plus labels.
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


class Counting:
    """Wraps a collator, counting real and padded tokens of every batch it builds."""

    def __init__(self, collate):
        self.collate, self.real, self.padded = collate, 0, 0

    def __call__(self, features):
        b = self.collate(features)
        self.real += int(b["attention_mask"].sum()) + int((b["labels"] != -100).sum())
        self.padded += b["input_ids"].numel() + b["labels"].numel()
        return b


def _measure(train, model, collator: Counting) -> dict:
    import torch
    from workspace import peak_rss_mib, reset_peak_rss, rss_mib

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    before = rss_mib()
    t0 = time.perf_counter()
    train()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    return {"seconds": round(dt, 2), "tokens": collator.real, "tokens_per_s": round(collator.real / dt, 1),
            "padding_share": round(1 - collator.real / max(1, collator.padded), 3),
            "peak_memory_mib": round(mem, 1), "memory_kind": "cuda allocated" if cuda else "process RSS",
            "rss_before_mib": round(before, 1)}


def sft_variant(params, paths, size: str, variant: str, steps: int) -> dict:
    import workspace
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

    from tinythinker.lm import seq2seq
    from tinythinker.lm.training import sft_trainer

    s = params.sft
    model, tokenizer = workspace.student(params, paths, size)
    rows, sampler = workspace.sft_rows(params, paths, tokenizer)
    grouped = {"train_sampling_strategy": "group_by_length"} if variant == "stock, length-grouped" else {}
    args = workspace.training_args(paths.root / "bench_ckpt", s.batch_size, steps, s.learning_rate, params.seed,
                                   **grouped)
    if variant == "ours":
        trainer = sft_trainer(seq2seq, params, model, tokenizer, rows, [], args=args, batch_sampler=sampler,
                              chain_kwargs={})
        collator = trainer.data_collator = Counting(trainer.data_collator)
    else:
        collator = Counting(DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                                 data_collator=collator)
    return {"benchmark": "sft", "variant": variant, "steps": steps} | _measure(trainer.train, model, collator)


def _pairs(paths, n: int) -> list[dict]:
    """Recall pairs from the teacher's recalls: chosen = a question's own, rejected = the next question's."""
    from tinythinker.io import read_jsonl

    rows = read_jsonl(paths.stage_file("recall_analyze_summarize", "recall"))[: n + 1]
    return [{"qid": str(i), "prompt": a["input"], "chosen": a["target"], "rejected": b["target"]}
            for i, (a, b) in enumerate(zip(rows, rows[1:]))]


def dpo_variant(params, paths, size: str, variant: str, num_pairs: int) -> dict:
    import copy

    import torch
    import workspace
    from transformers import Trainer

    from tinythinker.reflect import dpo_seq2seq as D
    from tinythinker.reflect.schedule import schedule_intervals

    d = params.dpo
    model, tokenizer = workspace.student(params, paths, size)
    if torch.cuda.is_available():
        model.to("cuda")
    D.disable_dropout(model)
    features = D.tokenize_pairs(_pairs(paths, num_pairs), tokenizer, params.sft.max_source_length,
                                params.generation.max_new_tokens)
    collator = Counting(lambda f: D.collate(f, tokenizer.pad_token_id))
    steps = d.passes * -(-len(features) // d.batch_size)
    args = workspace.training_args(paths.root / "bench_ckpt", d.batch_size, steps, d.learning_rate, params.seed)

    if variant == "ours":
        from tinythinker.lm.curriculum import CurriculumBatchSampler
        from tinythinker.lm.training import curriculum_trainer

        intervals = schedule_intervals(len(features), 0, d.batch_size)
        trainer = curriculum_trainer(
            Trainer, D.DPOLoss, model=model, args=args, train_dataset=features, processing_class=tokenizer,
            data_collator=collator,
            batch_sampler=CurriculumBatchSampler({"recall": len(features)}, intervals, d.batch_size, params.seed),
            valid=[], chain_kwargs={}, dpo=d)

        def train():
            D.reference_logps(model, features, d.batch_size, tokenizer.pad_token_id)
            trainer.train()
    else:
        ref = copy.deepcopy(model).eval().requires_grad_(False)

        class StockDPO(Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                chosen, rejected, nll = D.policy_logps(model, inputs)
                with torch.no_grad():
                    ref_chosen, ref_rejected, _ = D.policy_logps(ref, inputs)
                loss, _ = D.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, nll, d.beta, d.loss_type,
                                     d.loss_weights)
                return loss

        trainer = StockDPO(model=model, args=args, train_dataset=features, processing_class=tokenizer,
                           data_collator=collator)
        train = trainer.train
    return {"benchmark": "dpo", "variant": variant, "steps": steps, "pairs": len(features)} | _measure(
        train, model, collator)


def run(params, paths, size: str, steps: int, num_pairs: int) -> list[dict]:
    rows = []
    jobs = [(sft_variant, v, steps) for v in ("stock", "stock, length-grouped", "ours")]
    jobs += [(dpo_variant, v, num_pairs) for v in ("stock", "ours")]
    for fn, variant, n in jobs:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # own process: own peak memory
            rows.append(pool.submit(fn, params, paths, size, variant, n).result())
    for bench, baseline in (("sft", "stock, length-grouped"), ("dpo", "stock")):
        base = next(r for r in rows if r["benchmark"] == bench and r["variant"] == baseline)
        for r in rows:
            if r["benchmark"] == bench:
                r["vs_stock"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
                r["memory_vs_stock"] = round(r["peak_memory_mib"] / base["peak_memory_mib"], 2)
    plain = next(r for r in rows if r["variant"] == "stock")  # the original's set-up: random batches
    for r in rows:
        if r["benchmark"] == "sft":
            r["vs_unsorted_stock"] = round(r["tokens_per_s"] / plain["tokens_per_s"], 2)
    return rows
