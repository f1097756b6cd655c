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
    from tinythinker.data.corpus import corpus
    from tinythinker.data.download import download
    from tinythinker.data.prepare import prepare
    from tinythinker.params import load
    from tinythinker.paths import Paths
    from tinythinker.student.stages import pretrain, tokenizer_stage
    from tinythinker.teacher.build import build
    from tinythinker.teacher.prompts import prompt
    from tinythinker.teacher.request import request

    params = load(REPO / "params.yaml").replace(**{"dataset.name": "synthetic", "teacher.backend": "offline",
                                                    "student.model": "embedded",
                                                    # speed is measured on the initial weights: no pretraining
                                                    "student.pretrain.steps": 0, **overrides})
    paths = Paths(root)
    for stage in (download, prepare, corpus, prompt, request, build, tokenizer_stage, pretrain):
        stage(params, paths)
    return params, paths


def student(params, paths, size: str):
    """The embedded student, or a model of t5-small's or t5-base's shape built from config (random weights, no
    download; the vocabulary is the workspace's trained one)."""
    from tinythinker.lm.model import build_initial

    if size == "embedded":
        return build_initial(params, paths)
    shapes = {"t5-small": {"d_model": 512, "d_ff": 2048, "d_kv": 64, "num_heads": 8, "num_layers": 6,
                           "num_decoder_layers": 6, "dropout_rate": 0.1},
              "t5-base": {"d_model": 768, "d_ff": 3072, "d_kv": 64, "num_heads": 12, "num_layers": 12,
                          "num_decoder_layers": 12, "dropout_rate": 0.1}}
    if size not in shapes:
        raise SystemExit(f"--student: expected embedded or {', '.join(shapes)}, got {size!r}")
    return build_initial(params.replace(**{f"student.embedded.{k}": v for k, v in shapes[size].items()}), paths)


def training_args(out_dir, batch_size: int, steps: int, lr: float, seed: int, **extra):
    """Seq2SeqTrainingArguments for `steps` steps, no evaluation, checkpoints or logs (bf16 on a GPU that has it)."""
    import torch
    from transformers import Seq2SeqTrainingArguments

    return Seq2SeqTrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", seed=seed,
        remove_unused_columns=False, disable_tqdm=True, dataloader_pin_memory=torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), **extra)


def sft_rows(params, paths, tokenizer):
    """The sft stage's tokenised rows (stages in chain order) and its curriculum batch sampler."""
    from tinythinker.lm import seq2seq
    from tinythinker.lm.curriculum import CurriculumBatchSampler, sft_intervals
    from tinythinker.student.stages import stage_data

    s = params.sft
    stages = stage_data(params, paths)
    rows, lengths = seq2seq.sft_data(params, stages, tokenizer)
    intervals = sft_intervals(s.stage_type, s.interval, params.dataset.synthetic.num_options)
    sampler = CurriculumBatchSampler({k: len(v) for k, v in stages.items()}, intervals, s.batch_size, params.seed,
                                     lengths)
    return rows, sampler


def trained(params, paths, size: str, steps: int):
    """The student after `steps` curriculum SFT steps on the workspace data, no validation (eval mode).

    The generation benchmarks need a model whose texts end where the task's texts end and whose samples are as
    spread as a trained student's: a random-weight model writes max_new_tokens on every sequence and samples
    nearly uniformly, which hides what batching, early stops and repeated prompts change.
    """
    import torch

    from tinythinker.lm import seq2seq
    from tinythinker.lm.training import sft_trainer

    torch.manual_seed(params.seed)
    model, tokenizer = student(params, paths, size)
    s = params.sft
    if steps:
        rows, sampler = sft_rows(params, paths, tokenizer)
        args = training_args(paths.root / "bench_ckpt", s.batch_size, steps, s.learning_rate, params.seed,
                             lr_scheduler_type="cosine", warmup_steps=s.warmup_ratio)
        sft_trainer(seq2seq, params, model, tokenizer, rows, [], args=args, batch_sampler=sampler,
                    chain_kwargs={}).train()
    return model.eval(), tokenizer


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


def reset_peak_rss() -> None:
    """Start the peak over from the current RSS (Linux: clear_refs 5). A spawned worker inherits its parent's peak
    through fork and exec, so without this every variant would report the parent's size."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """Peak resident memory since the last `reset_peak_rss` (Linux VmHWM), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
