"""The reference log-probs of a DPO iteration (spec 6.3), for a trainer that does not compute its own
(`PreferenceTrainer.OWN_REFERENCE`): every pair scored by the starting weights in the training precision, inside the
Trainer (a callback before the first batch) once it has prepared the model (under FSDP / ZeRO-3 only the prepared
model has usable weights on every process), each process its share, and saved beside the checkpoints, so a resumed
run, whose model then holds trained weights, reads them."""
from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from ..io import read_json, write_json
from ..lm import distributed

REFERENCE = "reference.json"  # beside the iteration's checkpoints


def resume_files(trainer_kind) -> list[str]:
    """What a resumed iteration of `trainer_kind` needs beside its checkpoints (engine.Run.resume)."""
    return [] if trainer_kind.OWN_REFERENCE else [REFERENCE]


class ReferencePass(TrainerCallback):
    """Once the Trainer has prepared the model, before the first batch is drawn: the reference log-probs into `data`
    (the trainer kind's `set_reference`), which the loader reads lazily."""

    def __init__(self, checkpoints: Path, trainer_kind, data, pad_id: int, batch_size: int, precision: str):
        self.file, self.kind, self.data = checkpoints / REFERENCE, trainer_kind, data
        self.pad_id, self.batch_size, self.precision = pad_id, batch_size, precision

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if distributed.from_main(self.file.exists()):
            refs = read_json(self.file)
        else:
            self.model = model
            refs = distributed.map_sharded(self.score, self.data)
            self.model = None
            if distributed.is_main():
                write_json(self.file, refs)
        self.kind.set_reference(self.data, refs)

    def score(self, share: list) -> list:
        """The reference log-probs of one process's share of the rows."""
        return self.kind.reference_logps(self.model, share, self.batch_size, self.pad_id, self.precision)
