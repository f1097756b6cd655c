"""What a DPO iteration measures with its starting weights before its first step: the starting validation
accuracy (logged at step 0; the best-of-start selection compares against it) and, unless the trainer computes its
own (TRL), the reference log-probs of every pair (spec 6.3), both in the training precision. Computed inside the
Trainer (engine.PrePass), once it has prepared the model (under FSDP / ZeRO-3 only the prepared model has usable
weights on every process), and saved beside the checkpoints, so a resumed run, whose model then holds trained
weights, reads both."""
from __future__ import annotations

from pathlib import Path

from ..io import read_json, write_json
from ..student import distributed
from ..student.training import autocast

START, REFERENCE = "start.json", "reference.json"  # beside the iteration's checkpoints


class StartPass:
    """Called with the prepared model (an engine.PrePass): `accuracy` of the starting model, the reference
    log-probs put into `data` (the trainer kind's `set_reference`)."""

    def __init__(self, checkpoints: Path, trainer_kind, data, tokenizer, valid: list[dict], chain_kwargs: dict,
                 precision: str, batch_size: int):
        self.checkpoints, self.kind, self.data, self.tokenizer = checkpoints, trainer_kind, data, tokenizer
        self.valid, self.chain_kwargs, self.precision, self.batch_size = valid, chain_kwargs, precision, batch_size
        have_start, self.have_refs = distributed.from_main(((checkpoints / START).exists(),
                                                            (checkpoints / REFERENCE).exists()))
        self.accuracy = read_json(checkpoints / START)["start_valid_accuracy"] if have_start else None

    @staticmethod
    def keep(trainer_kind) -> list[str]:
        """The files a resumed run needs beside its checkpoints (engine.Run.resume)."""
        return [START] + ([] if trainer_kind.OWN_REFERENCE else [REFERENCE])

    def logged(self) -> dict:
        """What the curves show at step 0 (engine.LiveCallback's `start`)."""
        return {"eval_accuracy": self.accuracy}

    def __call__(self, prepared) -> None:
        procs = distributed.state()
        if self.accuracy is None:
            with autocast(self.precision, procs.device):  # as the trainer's evaluations
                self.accuracy = distributed.chain_accuracy(procs, prepared, self.tokenizer, self.valid,
                                                           desc="valid (start)", **self.chain_kwargs)
            if procs.is_main_process:
                write_json(self.checkpoints / START, {"start_valid_accuracy": self.accuracy})
        if self.kind.OWN_REFERENCE:
            return
        if self.have_refs:
            refs = read_json(self.checkpoints / REFERENCE)
        else:
            refs = distributed.map_sharded(lambda share: self.kind.reference_logps(
                prepared, share, self.batch_size, self.tokenizer.pad_token_id, self.precision), self.data)
            if procs.is_main_process:
                write_json(self.checkpoints / REFERENCE, refs)
        self.kind.set_reference(self.data, refs)


def start_accuracy(model, tokenizer, valid: list[dict], chain_kwargs: dict, precision: str) -> float:
    """The starting model's validation accuracy outside a Trainer (an iteration without pairs), every process
    generating its share with its own copy of the model."""
    procs = distributed.state()
    model.to(procs.device)
    with autocast(precision, procs.device):  # as the trainer's evaluations
        return distributed.chain_accuracy(procs, model, tokenizer, valid, desc="valid (start)", **chain_kwargs)
