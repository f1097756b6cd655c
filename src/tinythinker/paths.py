"""Where every stage reads and writes, relative to the repository root (dvc.yaml declares the same paths), and
the one place outside it: the machine's teacher response store.

A name that becomes part of a path (an iteration key, a `test --name`) must be a plain relative name
(`params.check_name`), so no output lands outside the repository.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .params import check_name

STORE_ENV = "TINYTHINKER_STORE"


def store_dir() -> Path:
    """The machine's teacher response store, outside every workspace: $TINYTHINKER_STORE, else
    $XDG_CACHE_HOME/tinythinker/responses, else ~/.cache/tinythinker/responses."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tinythinker" / "responses"


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    # --- data ---------------------------------------------------------------------------------------
    @property
    def raw(self) -> Path:  # official splits, normalised (download)
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:  # seeded train/valid/test + saved ids (prepare)
        return self.root / "data" / "prepared"

    def split(self, name: str) -> Path:
        return self.prepared / f"{name}.jsonl"

    @property
    def corpus(self) -> Path:  # the embedded student's pretraining text and probe (corpus)
        return self.root / "data" / "corpus"

    @property
    def teacher(self) -> Path:
        return self.root / "data" / "teacher"

    @property
    def requests(self) -> Path:  # one chat request per training question (prompt)
        return self.teacher / "requests.jsonl"

    @property
    def journal(self) -> Path:  # every paid response, append-only, keyed by request hash (request)
        return self.teacher / "journal.jsonl"

    @property
    def completions(self) -> Path:  # per question: its request and all completions gathered (request)
        return self.teacher / "completions.jsonl"

    @property
    def sft_data(self) -> Path:  # stage datasets (build)
        return self.root / "data" / "sft"

    def stage_file(self, stage_type: str, stage: str) -> Path:
        return self.sft_data / stage_type / f"{stage}.jsonl"

    def dpo_data(self, iteration: str) -> Path:
        return self.root / "data" / "dpo" / check_name(iteration, "iteration")

    def pairs(self, iteration: str, kind: str) -> Path:  # one pair kind of an iteration (protocol.PAIR_KINDS)
        return self.dpo_data(iteration) / f"{kind}_pairs.jsonl"

    @property
    def predictions(self) -> Path:
        return self.root / "data" / "predictions"

    def prediction(self, name: str) -> Path:  # test
        return self.predictions / f"{check_name(name, 'prediction name', nested=True)}.jsonl"

    # --- models -------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Path:
        return self.root / "models" / "tokenizer"

    @property
    def pretrained_model(self) -> Path:  # the student sft starts from (pretrain)
        return self.root / "models" / "pretrained"

    @property
    def sft_model(self) -> Path:
        return self.root / "models" / "sft"

    def dpo_model(self, iteration: str) -> Path:
        return self.root / "models" / "dpo" / check_name(iteration, "iteration")

    @property
    def checkpoints(self) -> Path:  # resumable trainer state, kept out of DVC outputs (git-ignored)
        return self.root / "models" / "checkpoints"

    @property
    def final_model(self) -> Path:  # the pipeline's result with its model card (publish), a DVC artifact
        return self.root / "models" / "final"

    def curves(self, run: str) -> Path:  # dvclive curves of a training run, "pretrain", "sft" or "dpo/<iteration>"
        stage, _, iteration = run.partition("/")
        return self.metrics / f"{stage}_live" / (check_name(iteration, "iteration") if iteration else "")

    def curves_work(self, run: str) -> Path:  # where a run writes its curves until its model is saved, git-ignored
        return self.checkpoints / "live" / run

    def tracker_logs(self, run: str) -> Path:  # TensorBoard event files (report_to), git-ignored
        return self.root / "runs" / run

    # --- metrics ------------------------------------------------------------------------------------
    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def metric(self, name: str) -> Path:
        return self.metrics / f"{check_name(name, 'metrics name', nested=True)}.json"
