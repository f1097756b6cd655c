"""Phase 2 for a decoder-only student: TRL's DPOTrainer on the project's curriculum schedule and chain validation.

The T5 path keeps the project's own loss (dpo_seq2seq.py; TRL's DPOTrainer takes causal LMs only). Here TRL does
the work with the same knobs: `dpo.loss_type` / `dpo.loss_weights` / `dpo.beta` are DPOConfig's own (sigmoid + 0.5
x NLL on the chosen side by default), the reference is the iteration's starting model (no ref_model: TRL scores the
pairs with the policy before its first step) and its log-probs are precomputed once, dropout off. The pairs come
from the same files, recall pairs then analyze pairs, each response `protocol.completion(text)` closed by the EOS,
and the same curriculum sampler interleaves them. TRL logs the metric names the T5 trainer logs (rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected), so the stage's metrics and
curves read the same for both families.
"""
from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

from .. import protocol as P
from ..params import Params

KIND = "causal"  # the student family (student/causal.py) this trainer serves
OWN_REFERENCE = True  # TRL precomputes the reference log-probs in its constructor, from the starting model


def arguments(params: Params):
    """DPOConfig with the dpo.* loss knobs, as a factory of the shared fields (engine.Run.arguments)."""
    from trl import DPOConfig

    d = params.dpo
    loss = {"loss_type": list(d.loss_type), "loss_weights": list(d.loss_weights), "beta": d.beta,
            "precompute_ref_log_probs": True, "precompute_ref_batch_size": d.batch_size, "disable_dropout": True,
            # the prompt as SFT capped it, a response as the chain generates it, and the EOS
            "max_length": params.sft.max_source_length + params.generation.max_new_tokens + 1}
    return partial(DPOConfig, **loss)


def train_data(params: Params, model, tokenizer, pairs: Mapping[str, Sequence[dict]]):
    """TRL's preference dataset: the pairs of every kind in PAIR_KINDS order (as the sampler counts them); TRL
    tokenises them and turns dropout off itself."""
    from datasets import Dataset

    rows = [{"prompt": p["prompt"], "chosen": P.completion(p["chosen"]), "rejected": P.completion(p["rejected"])}
            for s in P.PAIR_KINDS for p in pairs.get(s, ())]
    return Dataset.from_list(rows)


def build_trainer(params: Params, model, tokenizer, dataset, valid: list[dict], chain_kwargs: dict, *, args,
                  batch_sampler, callbacks: Sequence = ()):
    """TRL's DPOTrainer over `dataset` (train_data) with the curriculum sampler and chain validation. The reference
    log-probs are computed here, by the constructor."""
    from trl import DPOTrainer

    from ..lm.causal import lora_config
    from ..lm.training import curriculum_trainer

    # The Trainer wants an eval dataset when it evaluates by steps; evaluation is the chain on `valid` (the mixin's
    # evaluate), so one pair stands in.
    return curriculum_trainer(DPOTrainer, model=model, args=args, train_dataset=dataset,
                              eval_dataset=dataset.select(range(1)), processing_class=tokenizer,
                              peft_config=lora_config(params), callbacks=list(callbacks),
                              batch_sampler=batch_sampler, valid=valid, chain_kwargs=chain_kwargs)


def reference_logps(model, features, batch_size: int, pad_id: int, precision: str) -> list:
    raise NotImplementedError("TRL computes the reference log-probs itself (OWN_REFERENCE)")


def set_reference(features, refs: list) -> None:
    raise NotImplementedError("TRL computes the reference log-probs itself (OWN_REFERENCE)")
