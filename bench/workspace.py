"""A throwaway copy of the embedded default's data (download -> build -> tokenizer), made in-process.

Every benchmark runs on the real stage outputs of the synthetic task, so its inputs have the lengths and
formats the pipeline trains and generates on.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runnable from a checkout before `pip install -e .`


def make(root: Path, **overrides):
    """(params, paths) with data/ and models/tokenizer written under `root`, offline teacher."""
    from tinythinker.build import build
    from tinythinker.download import download
    from tinythinker.params import load
    from tinythinker.paths import Paths
    from tinythinker.prepare import prepare
    from tinythinker.prompts import prompt
    from tinythinker.student import tokenizer_stage
    from tinythinker.teacher import request

    params = load(REPO / "params.yaml").replace(**{"dataset.name": "synthetic", "teacher.backend": "offline",
                                                    "student.model": "embedded", **overrides})
    paths = Paths(root)
    for stage in (download, prepare, prompt, request, build, tokenizer_stage):
        stage(params, paths)
    return params, paths


def student(params, paths, size: str):
    """The embedded student, or a model of t5-small's shape built from config (random weights, no download)."""
    from tinythinker.student import load_student

    if size == "embedded":
        return load_student(params, paths)
    shapes = {"t5-small": {"d_model": 512, "d_ff": 2048, "d_kv": 64, "num_heads": 8, "num_layers": 6,
                           "num_decoder_layers": 6, "dropout_rate": 0.1}}
    if size not in shapes:
        raise SystemExit(f"--student: expected embedded or {', '.join(shapes)}, got {size!r}")
    return load_student(params.replace(**{f"student.embedded.{k}": v for k, v in shapes[size].items()}), paths)


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def rss_mib() -> float:
    """Resident memory now (Linux /proc), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
