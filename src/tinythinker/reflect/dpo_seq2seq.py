"""Phase 2 for a T5 (encoder-decoder) student: the project's DPO loss on a plain transformers Trainer.

TRL's DPOTrainer handles causal LMs only (dpo_causal.py), so the encoder-decoder loss lives here: per pair, the
prompt is the encoder input and chosen / rejected are two label sequences run in one concatenated forward pass; a
sequence's log-prob is the sum of its label-token log-probs. The loss is a weighted sum of TRL-named terms
(`dpo.loss_type` / `dpo.loss_weights`): "sigmoid" = -log sigmoid(beta * policy-vs-reference margin), "sft" = token-
mean NLL of the chosen responses. The reference is the iteration's starting model; its log-probs are computed once,
before the first step, and carried in the dataset, so no second model is held. They are computed inside the Trainer
once it has prepared the model (under FSDP / ZeRO-3 only the prepared model has usable weights on every process),
each process its share, and saved beside the checkpoints so a resumed run reuses them (its model then holds trained
weights, no longer the reference).
"""
from __future__ import annotations

from typing import Sequence

from ..params import Params
from ..lm.distributed import mean_over_processes
from ..lm.training import autocast, curriculum_trainer

KIND = "seq2seq"  # the student family (student/seq2seq.py) this trainer serves
OWN_REFERENCE = False  # the stage computes the reference log-probs (reference_logps) and hands them in (set_reference)


def arguments(params: Params):
    """The arguments' class for the shared fields (engine.Run.arguments)."""
    from transformers import TrainingArguments

    return TrainingArguments


def train_data(params: Params, model, tokenizer, pairs: dict[str, list[dict]]) -> list[dict]:
    """Token ids of the pairs, stage after stage in `pairs` order; dropout off in `model`, so the policy scores a
    sequence as its frozen reference did."""
    disable_dropout(model)
    features = []
    for rows in pairs.values():
        features += tokenize_pairs(rows, tokenizer, params.sft.max_source_length, params.generation.max_new_tokens)
    return features


def set_reference(features: list[dict], refs: list) -> None:
    """The reference log-probs (reference_logps of every feature, in order) into the features the loss reads."""
    for f, (c, r) in zip(features, refs):
        f["ref_chosen"], f["ref_rejected"] = c, r


# --- data --------------------------------------------------------------------------------------------
def tokenize_pairs(rows: Sequence[dict], tokenizer, max_source: int, max_target: int) -> list[dict]:
    """Token ids per pair; the tokenizer appends </s> to prompt and both responses (kept when truncating)."""
    if not rows:
        return []

    def enc(key, n):
        return tokenizer([r[key] for r in rows], truncation=True, max_length=n)["input_ids"]

    return [{"input_ids": i, "chosen": c, "rejected": r}
            for i, c, r in zip(enc("prompt", max_source), enc("chosen", max_target), enc("rejected", max_target))]


def collate(features: Sequence[dict], pad_id: int) -> dict:
    """One batch of 2B rows: the prompts twice, labels = chosen responses then rejected ones (-100 padded)."""
    import torch

    def pad(seqs, value):
        width = max(len(s) for s in seqs)
        return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)

    prompts = [f["input_ids"] for f in features] * 2
    batch = {"input_ids": pad(prompts, pad_id),
             "attention_mask": pad([[1] * len(p) for p in prompts], 0),
             "labels": pad([f["chosen"] for f in features] + [f["rejected"] for f in features], -100)}
    if "ref_chosen" in features[0]:
        batch["ref_chosen"] = torch.tensor([f["ref_chosen"] for f in features], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([f["ref_rejected"] for f in features], dtype=torch.float32)
    return batch


# --- loss --------------------------------------------------------------------------------------------
def sequence_logps(logits, labels):
    """(sum of label-token log-probs, number of label tokens) per row; -100 positions are ignored."""
    import torch.nn.functional as F

    # cross_entropy gives the per-token -log p without materialising a second vocabulary-wide tensor
    token = -F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return token.sum(-1), (labels != -100).sum(-1)


def policy_logps(model, batch):
    """Chosen and rejected sequence log-probs and the token-mean NLL of the chosen half, one forward pass."""
    labels = batch["labels"]
    base = getattr(model, "module", model)  # under DDP the forward goes through the wrapper, helpers do not
    decoder_input_ids = base.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids).logits
    sums, counts = sequence_logps(logits, labels)
    b = labels.shape[0] // 2
    nll = -sums[:b].sum() / counts[:b].sum().clamp(min=1)
    return sums[:b], sums[b:], nll


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, nll, beta: float,
             loss_type: Sequence[str], loss_weights: Sequence[float]):
    """(scalar loss, logged metrics) with TRL's metric names."""
    import torch.nn.functional as F

    margin = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
    terms = {"sigmoid": -F.logsigmoid(beta * margin).mean(), "sft": nll}
    loss = sum(w * terms[t] for t, w in zip(loss_type, loss_weights))
    chosen_reward = beta * (pi_chosen - ref_chosen).detach()
    rejected_reward = beta * (pi_rejected - ref_rejected).detach()
    metrics = {"rewards/chosen": chosen_reward.mean().item(), "rewards/rejected": rejected_reward.mean().item(),
               "rewards/accuracies": (chosen_reward > rejected_reward).float().mean().item(),
               "rewards/margins": (chosen_reward - rejected_reward).mean().item(),
               "logps/chosen": pi_chosen.detach().mean().item(), "logps/rejected": pi_rejected.detach().mean().item(),
               "nll_loss": nll.detach().item()}
    return loss, metrics


def reference_logps(model, features: list[dict], batch_size: int, pad_id: int,
                    precision: str = "fp32") -> list[list[float]]:
    """The model's [chosen, rejected] log-probs per feature, also stored in each (eval mode, no grad, in order),
    under the autocast training will use for the policy's (`precision`: fp32, bf16 or fp16)."""
    import torch

    out: list[list[float]] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(precision, model.device):
        for s in range(0, len(features), batch_size):
            chunk = features[s:s + batch_size]
            batch = {k: v.to(model.device) for k, v in collate(chunk, pad_id).items()}
            chosen, rejected, _ = policy_logps(model, batch)
            for f, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
                f["ref_chosen"], f["ref_rejected"] = c, r
                out.append([c, r])
    model.train(was_training)
    return out


def disable_dropout(model) -> None:
    """The policy must score a sequence the same way its frozen reference did (spec 6.3)."""
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):  # T5 attention keeps its rate as a float
            m.dropout = 0.0
    if hasattr(model.config, "dropout_rate"):
        model.config.dropout_rate = 0.0


class DPOLoss:
    """The loss half of the T5 DPO trainer, first in its bases (`dpo`: params.dpo): the weighted loss terms of
    `dpo_loss`, and their TRL-named metrics averaged into every training log."""

    # compute_loss returns a mean per micro-batch: the Trainer divides it by gradient_accumulation_steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args, dpo, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo = dpo
        # per micro-batch values since the last training log, kept as TRL's DPOTrainer keeps them (the curriculum
        # mixin reads them per pair kind)
        self._metrics: dict[str, dict[str, list[float]]] = {"train": {}}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected, nll = policy_logps(model, inputs)
        d = self.dpo
        loss, metrics = dpo_loss(chosen, rejected, inputs["ref_chosen"], inputs["ref_rejected"], nll,
                                 d.beta, d.loss_type, d.loss_weights)
        for k, v in metrics.items():
            self._metrics["train"].setdefault(k, []).append(v)
        return (loss, {}) if return_outputs else loss

    def log(self, logs, start_time=None):
        stored = self._metrics["train"]
        if "loss" in logs and stored:  # a training log: add the reward means since the last one
            logs |= mean_over_processes(self.accelerator, {k: sum(v) / len(v) for k, v in stored.items()})
            self._metrics["train"] = {}
        super().log(logs, start_time)


def build_trainer(params: Params, model, tokenizer, features: list[dict], valid: list[dict], chain_kwargs: dict, *,
                  args, batch_sampler, callbacks: Sequence = ()):
    """The DPO trainer over `features` (reference log-probs in them, or put there by reference.ReferencePass), drawn by
    the curriculum `batch_sampler`: a plain Trainer with the curriculum, chain validation and the DPO loss."""
    from transformers import Trainer

    return curriculum_trainer(Trainer, DPOLoss, model=model, args=args, train_dataset=features, eval_dataset=valid,
                              processing_class=tokenizer, data_collator=lambda f: collate(f, tokenizer.pad_token_id),
                              callbacks=list(callbacks), batch_sampler=batch_sampler, valid=valid,
                              chain_kwargs=chain_kwargs, dpo=params.dpo)
