"""The student family: the written contract (`StudentFamily`) and its one registry (`FAMILIES`).

A family knows how its models tokenise, build, generate and train: `seq2seq.py` (T5: prompt -> encoder, target ->
decoder) and `causal.py` (decoder-only: prompt -> completion in one sequence). A new family is one module (or
object) with the members below plus one `register_family` line; every stage reaches the family through
`family_of(config)` (a checkpoint) or `model.family(params, ...)` (the student a stage trains), never by name.
The DPO trainer of each family is registered the same way (reflect/trainers.py).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Sequence, runtime_checkable

from ..params import Params
from . import causal, seq2seq


@runtime_checkable
class StudentFamily(Protocol):
    """What every stage asks of a student family (modules satisfy it with module-level names)."""

    KIND: str  # the registry key; a DPO trainer serves the family of this KIND
    ENCODE: dict  # tokenizer kwargs of a generation batch (causal: left padding)
    SENTINELS: int  # mask tokens the embedded tokenizer reserves for pretraining
    LORA: bool  # whether `student.lora.rank` > 0 may train adapters on it

    def claims(self, config) -> bool:
        """Whether a model config (a checkpoint's) is of this family."""

    def wrap_vocab(self, vocab: list[tuple[str, float]]):
        """The family's tokenizer around a trained Unigram vocabulary (the embedded students)."""

    def prepare_tokenizer(self, tokenizer):
        """A loaded tokenizer made ready (pad token, ...)."""

    def model_class(self):
        """The transformers Auto class that loads its checkpoints."""

    def build_embedded(self, params: Params, tokenizer):
        """A small model built from `student.embedded` (weights seeded by the caller)."""

    def new_tokens(self, ids, enc):
        """The generated part of `model.generate`'s output."""

    def pretrain_collator(self, params: Params, tokenizer):
        """The pretraining objective's collator (token ids of a sentence -> a batch)."""

    def probe_prompt(self, prompt: str) -> str:
        """A fact probe as the pretrained model is asked it."""

    def sft_arguments(self, params: Params, **common):
        """Phase 1's TrainingArguments (sub)class instance from the shared fields."""

    def sft_data(self, params: Params, stages: Mapping[str, Sequence[dict]], tokenizer) -> tuple[Any, dict]:
        """(training rows in chain order, input lengths per stage)."""

    def sft_trainer(self, params: Params, model, tokenizer, rows, valid, held_out=None) -> tuple[type, dict]:
        """(library Trainer class, its constructor fields); training.sft_trainer adds the curriculum. `held_out`:
        teacher rows kept out of training, by stage, each prepared by `sft_data`: the fields' eval_dataset, whose
        loss per stage every evaluation computes through the Trainer's evaluation loop."""

    def finish(self, trainer) -> None:
        """Before the best model is saved (causal: fold LoRA adapters into the weights)."""


FAMILIES: dict[str, StudentFamily] = {}
# The students built from config (no download) by `student.model` name -> the KIND of their family.
EMBEDDED: dict[str, str] = {}


def register_family(family: StudentFamily, embedded: Optional[str] = None) -> StudentFamily:
    """Add `family` under its KIND (the later registered is asked first by `family_of`); `embedded`: the
    `student.model` name that builds a small one from config."""
    missing = [m for m in _MEMBERS if not hasattr(family, m)]
    if missing:
        raise TypeError(f"student family {getattr(family, 'KIND', family)!r} lacks {', '.join(missing)}")
    FAMILIES[family.KIND] = family
    if embedded:
        EMBEDDED[embedded] = family.KIND
    return family


def family_of(config) -> StudentFamily:
    """The family of a model config: the most recently registered family that claims it."""
    for family in reversed(list(FAMILIES.values())):
        if family.claims(config):
            return family
    raise ValueError(f"no student family claims a {type(config).__name__} (registered: {', '.join(FAMILIES)})")


_MEMBERS = sorted(set(StudentFamily.__annotations__) | {n for n in vars(StudentFamily) if not n.startswith("_")})

register_family(seq2seq, embedded="embedded")
register_family(causal, embedded="embedded-causal")
