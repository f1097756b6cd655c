"""The preference (DPO) trainer: the written contract (`PreferenceTrainer`) and its one registry (`TRAINERS`).

Each student family (student/family.py) trains its DPO iterations on the trainer registered under its KIND:
`dpo_seq2seq.py` (the project's encoder-decoder loss on a plain Trainer) and `dpo_causal.py` (TRL's DPOTrainer).
A new trainer is one module (or object) with the members below plus one `register_trainer` line; the stage
(`stages.dpo_train`) reaches it through `trainer_for(family)` only.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

from ..params import Params, ParamsError
from . import dpo_causal, dpo_seq2seq


@runtime_checkable
class PreferenceTrainer(Protocol):
    """What `dpo-train` asks of the DPO trainer of a student family (modules satisfy it with module-level names)."""

    KIND: str  # the student family (family.KIND) it serves
    OWN_REFERENCE: bool  # True: it computes the reference log-probs itself (TRL); else the stage hands them in

    def arguments(self, params: Params) -> Callable[..., Any]:
        """What builds its TrainingArguments (sub)class from the shared fields (engine.Run.arguments)."""

    def train_data(self, params: Params, model, tokenizer, pairs: Mapping[str, Sequence[dict]]):
        """Its training rows: the pairs of every kind, in `protocol.PAIR_KINDS` order."""

    def build_trainer(self, params: Params, model, tokenizer, data, valid: list[dict], chain_kwargs: dict, *, args,
                      batch_sampler, callbacks: Sequence = ()):
        """The Trainer (CurriculumChainMixin first) over `data`, drawn by `batch_sampler`, validated by the chain."""

    def reference_logps(self, model, features, batch_size: int, pad_id: int, precision: str) -> list:
        """The reference log-probs [chosen, rejected] of each row (unless OWN_REFERENCE)."""

    def set_reference(self, features, refs: list) -> None:
        """The reference log-probs into the rows the loss reads (unless OWN_REFERENCE)."""


TRAINERS: dict[str, PreferenceTrainer] = {}


def register_trainer(trainer: PreferenceTrainer, kind: Optional[str] = None) -> PreferenceTrainer:
    """Train the DPO iterations of the student family `kind` (default: the trainer's KIND) with `trainer`."""
    missing = [m for m in _MEMBERS if not hasattr(trainer, m)]
    if missing:
        raise TypeError(f"DPO trainer {getattr(trainer, 'KIND', trainer)!r} lacks {', '.join(missing)}")
    TRAINERS[kind or trainer.KIND] = trainer
    return trainer


def trainer_for(family) -> PreferenceTrainer:
    """The DPO trainer of a student family (student.model.family)."""
    if family.KIND not in TRAINERS:
        raise ParamsError(f"student.model: no DPO trainer for the {family.KIND} family "
                          f"(registered: {', '.join(TRAINERS)})")
    return TRAINERS[family.KIND]


_MEMBERS = sorted(set(PreferenceTrainer.__annotations__)
                  | {n for n in vars(PreferenceTrainer) if not n.startswith("_")})

register_trainer(dpo_seq2seq)
register_trainer(dpo_causal)
