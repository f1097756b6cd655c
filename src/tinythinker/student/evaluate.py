"""Stage `test`: the chain on the test questions, accuracy per run and majority-vote accuracy (spec 7).

`generation.strategy: sample` samples recall and analyze (temperature / top_k / top_p) and keeps summarize
greedy, as the original does; `generation.times` > 1 repeats the test set and adds a majority vote over the
runs (self-consistency). Greedy runs are identical, so a greedy chain is generated once and repeated.
Under several processes (`launcher`) each generates its share with its own copy of the model; the main
process writes.
"""
from __future__ import annotations

from pathlib import Path

from ..io import write_json, write_jsonl
from ..params import GenerationParams, Params, check_name
from ..paths import Paths
from ..protocol import read_questions
from . import distributed
from .chain import Decoding, accuracy, majority_vote, run_chain
from .model import load_student


def decodings(g: GenerationParams) -> tuple[Decoding, Decoding]:
    """(recall/analyze, summarize) decoding of a test run: sampled and greedy with `strategy: sample`, else greedy
    twice (the same object, which `test` takes for "one run is enough")."""
    greedy = Decoding(max_new_tokens=g.max_new_tokens)
    if g.strategy != "sample":
        return greedy, greedy
    return Decoding(do_sample=True, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                    max_new_tokens=g.max_new_tokens), greedy


def test(params: Params, paths: Paths, model_dir: Path, name: str) -> dict:
    check_name(name, "--name", nested=True)  # before minutes of generation: it becomes two output paths
    g = params.generation
    questions = read_questions(paths.sft_data / "test.jsonl")
    with distributed.replicas():  # load_student checks the directory before torch's import: fails in a second
        model, tokenizer = load_student(params, paths, Path(model_dir), "--model")
    import torch

    procs = distributed.state()  # generation only: every process holds full weights, so after loading is fine
    model.to(procs.device)
    sampled, greedy = decodings(g)

    # A greedy chain is generated once and repeated; sampled runs go through the chain together, so each
    # question's prompt is encoded once and its `times` recalls are drawn as one num_return_sequences call.
    copies = 1 if sampled is greedy else g.times
    torch.manual_seed(distributed.rank_seed(params.seed))  # a reproducible sample
    chains = distributed.map_sharded(
        lambda share: run_chain(model, tokenizer, share, stage_type=params.sft.stage_type, recall=sampled,
                                analyze=sampled, summarize=greedy, batch_size=g.batch_size,
                                desc=f"{name} x{copies}"), questions * copies)
    runs = [chains[t * len(questions):(t + 1) * len(questions)] for t in range(copies)] * (g.times // copies)

    accs = [accuracy(run) for run in runs]
    metrics = {"accuracy": sum(accs) / len(accs), "questions": len(questions)}
    if g.times > 1:
        metrics |= {f"accuracy_run_{t + 1}": a for t, a in enumerate(accs)}
        votes = majority_vote(runs)
        metrics["majority_accuracy"] = accuracy([{"prediction": v, "gt": q["gt"]} for v, q in zip(votes, questions)])
    if not procs.is_main_process:
        return metrics
    write_jsonl(paths.prediction(name),
                ({"qid": r["qid"], "run": t + 1, "recall": r["recall"], "analyses": r["analyses"],
                  "summary": r["summary"], "prediction": r["prediction"], "gt": r["gt"]}
                 for t, run in enumerate(runs) for r in run))
    write_json(paths.metric(name), metrics)
    return metrics
