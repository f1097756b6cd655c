"""The prepared GPU check (run it as `bash bench/gpu_check.sh`): measured parts, then the CSQA preset's shape end to end.

Parts, in order, each in its own budget (seconds on a GPU; the whole check within --budget, 440 by default, 8 minutes
with the install) and each written to bench/results/<device>-check-<part>.json as soon as it ends (bench/gpu_parts.py
says what each measures): chain-t5-small 90 and chain-t5-base 90 (the chain the original's way, ours with the dynamic
KV cache, a static one, and a static one with the decode step compiled), train-t5-base 35, train-t5-large 45,
train-qwen2.5-0.5b 35, train-qwen2.5-0.5b-lora 30 (SFT steps, DPO steps, one chain pass of the paper's shapes), then
pipeline 100 (below, bf16 at --scale 0.25 on a GPU). A part that fails is recorded and the next one runs.

The pipeline part:
A t5-small-shaped student built from config (random init, trained tokenizer), a slice of the official CSQA
files, a local OpenAI-compatible teacher on 127.0.0.1 answering well-formed rationales, then the stages in
one process, as the CLI runs them: download, prepare, prompt, request, build, tokenizer, and per precision
(bf16, fp32; `sft.precision` and `dpo.precision` both set to it) sft, test of the SFT model, dpo-sample,
dpo-train and test of one DPO iteration. Wall time and
peak GPU memory per stage, accuracies and step counts go to bench/results/gpu-check-<device>.json with a
short summary beside it (.txt).

Sizes are the check's, not the paper's: the sizes table below (first N official train questions, SFT
epochs, DPO questions and passes); everything else (batch sizes, intervals, learning rates, lengths,
samples) is the preset. `--cpu` runs every part in tiny form and the pipeline with a tiny student on the CPU
(a few minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from local_server import LocalServer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's code, whatever is installed

T5_SMALL = {"d_model": 512, "d_ff": 2048, "d_kv": 64, "num_heads": 8, "num_layers": 6, "num_decoder_layers": 6,
            "dropout_rate": 0.1, "vocab_size": 8000}
TINY = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1,
        "dropout_rate": 0.1, "vocab_size": 400}
# train = official train questions kept (valid is sampled from them, as large as test); test = official dev
SIZES = {
    "gpu": {"train": 512, "test": 128, "sft_epochs": 1.0, "dpo_questions": 96, "dpo_samples": 4, "dpo_passes": 2,
            "max_new_tokens": 200, "student": T5_SMALL},
    "cpu": {"train": 60, "test": 12, "sft_epochs": 1.0, "dpo_questions": 12, "dpo_samples": 2, "dpo_passes": 1,
            "max_new_tokens": 24, "student": TINY},
}
_OPTION_RE = re.compile(r"([A-Z])\. (.*?)(?=, [A-Z]\. |$)")


# --- teacher -------------------------------------------------------------------------------------------
def rationale(user: str, i: int) -> str:
    """A well-formed completion of the rationalisation template `user` (prompts.user_message): key
    information, then each verdict line it asks for with a reason naming the option's text."""
    lines = user.split("\n")
    question, texts = lines[0], dict(_OPTION_RE.findall(lines[1].removeprefix("Options: ")))
    verdicts = [line.removeprefix("Explanations: ").removesuffix(" Because") for line in lines[3:]]
    gold = texts.get(verdicts[0][0], "it")
    body = []
    for v in verdicts:
        text = texts.get(v[0], "this option")
        why = f"{text} is what the question asks for" if v.endswith(" correct.") else \
            f"{text} does not answer it as well as {gold} does"
        body.append(f"{v} Because {why} (view {i}).")
    return f"Key Information: {question} points to {gold}.\nExplanations: " + "\n".join(body)


class Teacher(LocalServer):
    """A chat-completions server on 127.0.0.1 that answers every request at once with `n` rationales."""

    def __init__(self):
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests += 1
                user = body["messages"][-1]["content"]
                payload = {"id": f"check-{owner.requests}", "object": "chat.completion", "created": 0,
                           "model": body["model"],
                           "choices": [{"index": i, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": rationale(user, i)}}
                                       for i in range(body.get("n", 1))],
                           "usage": {"prompt_tokens": 900, "completion_tokens": 90 * body.get("n", 1),
                                     "total_tokens": 900 + 90 * body.get("n", 1)}}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler, backlog=128)  # the teacher's 64 concurrent connections, none refused


# --- measuring -----------------------------------------------------------------------------------------
def _slice(source: Path, dest: Path, train: int, test: int) -> None:
    """The first `train` / `test` lines of the official train / dev files (`dataset.limit` caps every split
    alike; the check wants more train than test questions)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_rand_split.jsonl", train), ("dev_rand_split.jsonl", test)):
        if not (source / name).exists():
            sys.exit(f"gpu_check: {source / name} not found: copy the official CSQA files there "
                     "(bash bench/gpu_check.sh --fetch) or pass --source DIR")
        with open(source / name, encoding="utf-8") as src, open(dest / name, "w", encoding="utf-8") as out:
            for _, line in zip(range(n), src):
                out.write(line)


def _timed(log: dict, name: str, fn):
    """Run one stage; its wall time, peak GPU memory (CUDA) and what it returned go into `log[name]`."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    print(f"[gpu_check] {name} ...", flush=True)
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    entry = {"seconds": round(time.perf_counter() - t0, 2)}
    if cuda:
        entry["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        matmul = torch.backends.cuda.matmul
        # torch >= 2.9: reading the legacy flag after training.set_tf32 turned TF32 on through the new API raises
        entry["tf32_matmul"] = matmul.fp32_precision == "tf32" if hasattr(matmul, "fp32_precision") \
            else matmul.allow_tf32
    if isinstance(out, dict):
        entry["result"] = {k: v for k, v in out.items() if isinstance(v, (int, float, str, bool))}
    log[name] = entry
    print(f"\n[gpu_check] {name}: {entry['seconds']} s"
          + (f", peak {entry['peak_gpu_mib']} MiB" if cuda else ""), flush=True)
    return out


def run(size: dict, source: Path, work: Path, precisions: list[str], save) -> dict:
    """The stages; `save(log)` after the data stages and after each precision, so a run cut short by a time
    limit still leaves what it measured."""
    import torch

    from tinythinker import presets
    from tinythinker.data.corpus import corpus
    from tinythinker.data.download import download
    from tinythinker.data.prepare import prepare
    from tinythinker.params import load, to_dict
    from tinythinker.paths import Paths
    from tinythinker.reflect.stages import dpo_sample, dpo_train
    from tinythinker.student.stages import pretrain, sft, test, tokenizer_stage
    from tinythinker.teacher.build import build
    from tinythinker.teacher.prompts import prompt
    from tinythinker.teacher.request import request

    _slice(source, work / "csqa", size["train"], size["test"])
    teacher = Teacher()
    os.environ.setdefault("OPENAI_API_KEY", "gpu-check-local-teacher")  # the local server ignores it
    student = {f"student.embedded.{k}": v for k, v in size["student"].items()}
    base = presets.resolve(load(REPO / "params.yaml"), "csqa", "t5-small").replace(**{
        "dataset.source": str(work / "csqa"), "teacher.base_url": teacher.url, "student.model": "embedded",
        # the local teacher has no quota: the API's rate limits would only make the check wait
        "teacher.requests_per_minute": 1_000_000, "teacher.tokens_per_minute": 1_000_000_000,
        **student, "sft.epochs": size["sft_epochs"], "generation.max_new_tokens": size["max_new_tokens"],
        "dpo.max_questions": size["dpo_questions"], "dpo.samples": size["dpo_samples"],
        "dpo.passes": size["dpo_passes"], "dpo.iterations": {"iter1": {"init": "models/sft"}},
        "student.pretrain.steps": 0})  # the check times the paper's stages: a student from scratch, as the T5 shape
    log: dict = {"params": to_dict(base), "stages": {}}
    data = Paths(work / "data_stages")
    try:
        for name, stage in (("download", download), ("prepare", prepare), ("corpus", corpus), ("prompt", prompt),
                            ("request", request), ("build", build), ("tokenizer", tokenizer_stage),
                            ("pretrain", pretrain)):
            _timed(log["stages"], name, lambda: stage(base, data))
    finally:
        teacher.close()
    log["teacher_requests"] = teacher.requests
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration
    config = T5Config(**{**size["student"], "vocab_size": len(AutoTokenizer.from_pretrained(data.tokenizer))})
    with torch.device("meta"):  # the student's size, for the record
        log["student_params_m"] = round(sum(p.numel() for p in T5ForConditionalGeneration(config).parameters()) / 1e6, 2)
    save(log)

    for precision in precisions:
        overrides = {"sft.precision": precision, "dpo.precision": precision}
        params = base.replace(**overrides)
        paths = Paths(work / precision)
        shutil.copytree(data.root / "data", paths.root / "data")
        shutil.copytree(data.tokenizer, paths.tokenizer)
        shutil.copytree(data.pretrained_model, paths.pretrained_model)
        stages: dict = {}
        _timed(stages, "sft", lambda: sft(params, paths))
        _timed(stages, "test_sft", lambda: test(params, paths, paths.sft_model, "test/sft"))
        _timed(stages, "dpo_sample", lambda: dpo_sample(params, paths, "iter1"))
        _timed(stages, "dpo_train", lambda: dpo_train(params, paths, "iter1"))
        _timed(stages, "test_dpo", lambda: test(params, paths, paths.dpo_model("iter1"), "test/iter1"))
        log[precision] = {"overrides": overrides, "stages": stages, "total_seconds": round(sum(s["seconds"] for s in stages.values()), 1)}
        save(log)
    return log


def slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def summary(res: dict) -> str:
    lines = [f"gpu_check {res['date']} on {res['device']} (torch {res['torch']}, transformers {res['transformers']})"
             + ("" if res["complete"] else ", INCOMPLETE")]
    for name, p in res.get("parts", {}).items():
        lines.append(f"part {name}: " + (f"{p['seconds']} s of {p['budget_s']} s, {p['file']}" if "seconds" in p
                                         else p.get("skipped", "")) + (f"  ERROR {p['error']}" if "error" in p else ""))
        for row in p.get("rows", []):
            lines.append("  " + row)
    if "data" not in res or "stages" not in res["data"]:
        return "\n".join(lines + ["pipeline: no stage finished"]) + "\n"
    lines += [f"pipeline, mode {res['mode']}: {res['sizes']['train']} official train / {res['sizes']['test']} dev "
              f"questions, student {res['student_params_m']} M parameters, total {res['total_seconds']} s",
              "data stages: " + ", ".join(f"{k} {v['seconds']} s" for k, v in res["data"]["stages"].items())]
    for p in res["precisions"]:
        if p not in res["data"]:
            lines.append(f"{p}: not run (cut short)")
            continue
        r = res["data"][p]
        lines.append(f"{p}: {r['total_seconds']} s (sft.precision = dpo.precision = {p})")
        for name, s in r["stages"].items():
            extra = {k: s.get("result", {}).get(k) for k in ("accuracy", "valid_accuracy", "train_steps", "steps",
                                                              "recall_pairs", "analyze_pairs") if k in s.get("result", {})}
            mem = f", peak {s['peak_gpu_mib']} MiB" if "peak_gpu_mib" in s else ""
            lines.append(f"  {name:<11} {s['seconds']:>8} s{mem}  {json.dumps(extra) if extra else ''}")
    return "\n".join(lines) + "\n"


def _part_lines(result: dict) -> list[str]:
    """One line per measured row of a part, for the summary."""
    out = []
    for r in result.get("rows", []) + result.get("phases", []):
        name = r.get("variant") or r.get("phase")
        if "skipped" in r:
            out.append(f"{name}: skipped ({r['skipped']})")
            continue
        keys = ("seq_per_s", "vs_original", "vs_dynamic", "step_s", "tokens_per_s", "mfu", "peak_gpu_mib")
        out.append(f"{name}: " + ", ".join(f"{k} {r[k]}" for k in keys if k in r))
    return out


PIPELINE = "pipeline"
PIPELINE_BUDGET = 100  # seconds on a GPU: the CSQA preset's stages at --scale 0.25, bf16


def main() -> None:
    from gpu_parts import PARTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny sizes and student on the CPU (a local end-to-end try)")
    ap.add_argument("--source", type=Path, default=REPO / "bench" / "data" / "csqa",
                    help="directory with the official CSQA files (train_rand_split.jsonl, dev_rand_split.jsonl)")
    ap.add_argument("--parts", default=",".join([*PARTS, PIPELINE]),
                    help=f"parts to run, in order (default all: {', '.join([*PARTS, PIPELINE])})")
    ap.add_argument("--budget", type=float, default=440,
                    help="seconds for the whole check on a GPU (default 440: with the install, 8 minutes); a part that would start past it is "
                         "skipped, each part stops measuring at its own budget (gpu_parts.PARTS)")
    ap.add_argument("--precisions", default=None, help="the pipeline's precisions (default bf16 on a GPU)")
    ap.add_argument("--scale", type=float, default=None,
                    help="multiply the pipeline's question counts (default 0.25 on a GPU, 1 on the CPU)")
    ap.add_argument("--out", type=Path, help="the pipeline's result JSON (default bench/results/gpu-check-<device>"
                                             ".json); each part writes <device>-check-<part>.json beside it")
    a = ap.parse_args()

    import torch
    import transformers

    cuda = torch.cuda.is_available()
    if not cuda and not a.cpu:
        sys.exit("gpu_check: no CUDA device; use --cpu for the tiny CPU run")
    mode = "cpu" if a.cpu else "gpu"
    parts = [p for p in a.parts.split(",") if p]
    unknown = set(parts) - {*PARTS, PIPELINE}
    if unknown:
        sys.exit(f"gpu_check: unknown parts {sorted(unknown)} (known: {', '.join([*PARTS, PIPELINE])})")
    size = dict(SIZES[mode])
    scale = a.scale if a.scale is not None else (1.0 if a.cpu else 0.25)
    for k in ("train", "test", "dpo_questions"):
        size[k] = max(4, round(size[k] * scale))
    precisions = (a.precisions or ("fp32" if a.cpu else "bf16")).split(",")
    if a.cpu:
        precisions = [p for p in precisions if p != "bf16"] or ["fp32"]  # bf16 is the GPU's
    device = torch.cuda.get_device_name() if cuda else "cpu"
    out = a.out or REPO / "bench" / "results" / f"gpu-check-{slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if cuda:  # the static-cache rows compile one graph per batch shape
        import torch._dynamo

        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 64)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device, "torch": torch.__version__,
           "transformers": transformers.__version__, "mode": mode, "budget_s": None if a.cpu else a.budget,
           "sizes": {k: v for k, v in size.items() if k != "student"}, "student": size["student"],
           "precisions": precisions, "parts": {}, "complete": False}
    t0 = time.perf_counter()

    def save(log: dict | None = None) -> None:
        if log is not None:
            res.update(data=log, student_params_m=log.get("student_params_m"))
        res["total_seconds"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(res, indent=2) + "\n")
        out.with_suffix(".txt").write_text(summary(res))

    dev = torch.device("cuda" if cuda else "cpu")
    for name in parts:
        budget = PIPELINE_BUDGET if name == PIPELINE else PARTS[name][0]
        left = a.budget - (time.perf_counter() - t0)
        entry = res["parts"].setdefault(name, {"budget_s": budget})
        if not a.cpu and left < min(budget, 30):
            entry["skipped"] = f"the check's budget was spent ({left:.0f} s left)"
            save()
            continue
        print(f"[gpu_check] part {name} (budget {budget} s) ...", flush=True)
        t1 = time.perf_counter()
        if name == PIPELINE:
            with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
                run(size, a.source, Path(tmp), precisions, save)
            entry.update(seconds=round(time.perf_counter() - t1, 1), file=out.name)
            save()
            continue
        target = out.parent / f"{slug(device)}-check-{name}.json"
        result = {"part": name, "device": device, "torch": torch.__version__, "transformers": transformers.__version__,
                  "date": res["date"], "budget_s": budget, "tiny": a.cpu}
        try:
            result |= PARTS[name][1](a.cpu, dev, min(budget, max(left, 10)))
        except Exception as e:  # noqa: BLE001 - one part's failure is recorded; the others still run
            import traceback

            result["error"] = f"{type(e).__name__}: {e}"
            result["traceback"] = traceback.format_exc()[-4000:]
            entry["error"] = result["error"][:300]
            print(result["traceback"], flush=True)
        result["seconds"] = round(time.perf_counter() - t1, 1)
        target.write_text(json.dumps(result, indent=2) + "\n")
        entry.update(seconds=result["seconds"], file=target.name, rows=_part_lines(result))
        print(f"[gpu_check] part {name}: {result['seconds']} s\n  " + "\n  ".join(entry["rows"]), flush=True)
        if cuda:
            torch.cuda.empty_cache()
        save()
    res["complete"] = all("seconds" in p and "error" not in p for p in res["parts"].values())
    save()
    print("\n" + summary(res) + f"written {out} and {out.with_suffix('.txt').name}", flush=True)
    if any("error" in p for p in res["parts"].values()):
        sys.exit("gpu_check: a part failed (see its error above and in the results)")


if __name__ == "__main__":
    main()
