"""What changes when a training stage runs as several processes (`launcher` in params.yaml).

`accelerate launch` starts one copy of the stage per device; the Trainer then does DDP / FSDP / DeepSpeed.
Our own file writes must happen once (main process) and after everybody is ready; every generation (validation,
DPO sampling, test) and the DPO reference pass are split across processes and gathered (`map_sharded`); the
training batches are sharded by the curriculum sampler itself (`prepare_sharded_loader`); saving the best model
involves every process (FSDP and DeepSpeed gather sharded weights) while only the main one writes. In a single
process every function here is the plain thing.

Order matters in the training stages: process group (`state()`), then the TrainingArguments, then the model.
Only then can transformers load memory-efficiently: under FSDP with `fsdp_cpu_ram_efficient_loading`
`from_pretrained` gives real weights to local rank 0 only (it checks that torch.distributed is initialised),
and the Trainer broadcasts them when it wraps the model; under ZeRO-3 the arguments register the DeepSpeed
config that makes `from_pretrained` build the model partitioned (`zero.Init`). The other ranks' modules hold
no usable weights before the Trainer has prepared the model, so everything the training stages compute with
the model runs inside the Trainer (the dpo stage's pre-pass, reflect/dpo.py) or after it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..io import atomic_path


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


def from_main(value: Any) -> Any:
    """The main process's `value` on every process (a decision the others must follow, e.g. a fresh start)."""
    s = state()
    if s.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list
    return broadcast_object_list([value])[0]


def map_sharded(fn: Callable[[list], list], items: Sequence) -> list:
    """`fn(items)` (one result per item, in order) with each process computing an equal share; every process
    gets all results in input order.

    Process k takes items k, k+n, ...; shares are padded to equal length by repeating the share's first item
    (results dropped), so every process runs the same number of batches, which FSDP and ZeRO-3 need (their
    forward passes are collective). One process: exactly `fn(items)`.
    """
    s = state()
    n, k = s.num_processes, s.process_index
    items = list(items)
    if n == 1:
        return fn(items)
    from accelerate.utils import gather_object

    share, width = items[k::n], -(-len(items) // n)
    padded = share + [(share or items)[0]] * (width - len(share)) if items else []
    out = list(fn(padded))[:len(share)]
    results: list = [None] * len(items)
    for r, part in enumerate(gather_object([out])):
        results[r::n] = part
    return results


def chain_accuracy(state, model, tokenizer, questions: list[dict], **chain_kwargs) -> float:
    """Chain accuracy over `questions`, each process running its own share; the same value everywhere.

    `state` (an Accelerator or PartialState) is kept for the callers' sake; the split follows the process group.
    """
    from . import chain

    return chain.accuracy(map_sharded(lambda qs: chain.run_chain(model, tokenizer, qs, **chain_kwargs), questions))


def mean_over_processes(accelerator, values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes (each logged the mean of its own share); as they are with one."""
    if not values or accelerator.num_processes == 1:
        return values
    import torch

    t = torch.tensor(list(values.values()), dtype=torch.float64, device=accelerator.device)
    return dict(zip(values, accelerator.reduce(t, reduction="mean").tolist()))


def rank_seed(seed: int) -> int:
    """A sampling seed of this process: `seed` on the main one (a single process draws what it always drew),
    a seed derived from (seed, rank) on the others so their shares are not sampled with the same stream."""
    k = state().process_index
    if k == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{k}".encode()).digest()[:4], "big")


@contextlib.contextmanager
def replicas() -> Iterator[None]:
    """Load full weights on every process (generation stages: each process generates its share with its own
    copy); without this, an FSDP launch config's cpu_ram_efficient_loading leaves all but rank 0 empty."""
    key, old = "FSDP_CPU_RAM_EFFICIENT_LOADING", os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def prepare_sharded_loader(accelerator, dataset, batch_sampler, collate_fn, num_workers: int, pin_memory: bool):
    """A training DataLoader whose batch sampler already yields this process's share of every step
    (`CurriculumBatchSampler` with num_replicas/rank), prepared by accelerate as for one process: batches go to
    the device, and accelerate does not shard them a second time."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    dl = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=num_workers,
                    pin_memory=pin_memory)
    return prepare_data_loader(dl, accelerator.device, num_processes=1, process_index=0,
                               put_on_device=accelerator.device_placement, rng_types=accelerator.rng_types.copy(),
                               non_blocking=accelerator.non_blocking,
                               use_stateful_dataloader=accelerator.use_stateful_dataloader)


def save_model(trainer, out: Path) -> None:
    """`trainer.save_model` into `out`, atomically; called by every process."""
    acc = trainer.accelerator
    tmp = out.parent / f".{out.name}.saving"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    try:
        trainer.save_model(str(tmp))  # writes on the main process only
    except Exception as e:  # safetensors reports a full disk as its own SafetensorError, not an OSError
        shutil.rmtree(tmp, ignore_errors=True)
        raise save_error(e, out) from None
    acc.wait_for_everyone()
    if acc.is_main_process:
        with atomic_path(out) as final:
            os.replace(tmp, final)
    acc.wait_for_everyone()


def save_error(e: Exception, out: Path) -> OSError:
    """An OSError naming `out` for what failed while saving a model there (the stage prints it as one line)."""
    import errno
    import re

    if isinstance(e, OSError):
        return OSError(e.errno, e.strerror or str(e), str(out))
    code = re.search(r"(?:code: |os error )(\d+)", str(e))
    if code and int(code.group(1)) in errno.errorcode:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(out))
    return OSError(errno.EIO, f"cannot save the model: {type(e).__name__}: {' '.join(str(e).split())[:300]}", str(out))
