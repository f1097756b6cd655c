"""What changes when a training stage runs as several processes (`launcher` in params.yaml).

`accelerate launch` starts one copy of the stage per device; the Trainer then does DDP / FSDP / DeepSpeed.
Our own file writes must happen once (main process) and after everybody is ready, validation is split
across processes, and saving the best model involves every process (FSDP and DeepSpeed gather sharded
weights) while only the main one writes. In a single process every function here is the plain thing.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from .io import atomic_path


def state():
    """The process's accelerate state (a singleton); the first call sets up the process group.

    cpu=True without a GPU, as the Trainer's arguments say too (`use_cpu`), so that a multi-process launch on
    CPU becomes one gloo DDP job whichever of the two is created first.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


@contextlib.contextmanager
def main_first() -> Iterator[bool]:
    """The main process runs the block (yielding True) while the others wait, then they run it (False)."""
    s = state()
    with s.main_process_first():
        yield s.is_main_process


def is_main() -> bool:
    return state().is_main_process


def chain_accuracy(accelerator, model, tokenizer, questions: list[dict], **chain_kwargs) -> float:
    """Chain accuracy over `questions`, each process running its own share; the same value everywhere."""
    import torch

    from .chain import is_correct, run_chain

    n, k = accelerator.num_processes, accelerator.process_index
    results = run_chain(model, tokenizer, questions[k::n], **chain_kwargs)
    correct = sum(map(is_correct, results))
    counts = torch.tensor([correct, len(results)], dtype=torch.float64, device=accelerator.device)
    if n > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    return 100.0 * counts[0].item() / max(1.0, counts[1].item())


def save_model(trainer, out: Path) -> None:
    """`trainer.save_model` into `out`, atomically; called by every process."""
    acc = trainer.accelerator
    tmp = out.parent / f".{out.name}.saving"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    trainer.save_model(str(tmp))  # writes on the main process only
    acc.wait_for_everyone()
    if acc.is_main_process:
        with atomic_path(out) as final:
            os.replace(tmp, final)
    acc.wait_for_everyone()
