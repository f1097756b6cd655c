"""Run the model stages in a prepared workspace and record what each process saw (tests/test_multiprocess.py).

    python3 tests/stages_traced.py ROOT OUT [STAGES]                                     one process
    accelerate launch --multi_gpu --num_processes 2 tests/stages_traced.py ROOT OUT [STAGES]   two (gloo DDP on CPU)

STAGES: a comma-separated subset of sft,test,dpo_sample,dpo_train (default all). Writes OUT/rank<k>.json: per
training stage the example indices of each micro-batch with its optimizer step (as the batches reach
`training_step`) with their reference log-probs for DPO, the questions each generation call
got, the stage metrics, and a check of `map_sharded`'s order. Nothing in the stages is replaced: the loader
is wrapped to carry each row's index beside the batch, and run_chain to note its inputs.
"""
import json
import sys
from pathlib import Path

import torch
import transformers

import tinythinker.lm.chain as chain
import tinythinker.lm.distributed as distributed
import tinythinker.student.stages as stages
from tinythinker.params import load
from tinythinker.paths import Paths
from tinythinker.reflect.stages import dpo_sample, dpo_train
from tinythinker.student.stages import sft, test

root, out = Path(sys.argv[1]), Path(sys.argv[2])
only = sys.argv[3].split(",") if len(sys.argv) > 3 else None
torch.set_num_threads(1)
paths, params = Paths(root), load(root / "params.yaml")
rank = distributed.state().process_index
record: dict = {"steps": [], "generate": []}

prepare = distributed.prepare_sharded_loader


class Indexed(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return i, self.rows[i]


def traced_loader(accelerator, dataset, batch_sampler, collate_fn, num_workers, pin_memory):
    def collate(items):
        return {**collate_fn([row for _, row in items]), "_ids": torch.tensor([i for i, _ in items])}
    return prepare(accelerator, Indexed(dataset), batch_sampler, collate, num_workers, pin_memory)


original_step = transformers.Trainer.training_step


def training_step(self, model, inputs, *args, **kwargs):
    entry = {"step": self.state.global_step, "ids": inputs.pop("_ids").tolist()}
    if "ref_chosen" in inputs:
        entry["ref"] = [[c, r] for c, r in zip(inputs["ref_chosen"].tolist(), inputs["ref_rejected"].tolist())]
    record["steps"].append(entry)
    return original_step(self, model, inputs, *args, **kwargs)


original_chain = chain.run_chain


def run_chain(model, tokenizer, questions, **kwargs):
    record["generate"].append({"desc": kwargs.get("desc"), "qids": [q["qid"] for q in questions]})
    return original_chain(model, tokenizer, questions, **kwargs)


distributed.prepare_sharded_loader = traced_loader
transformers.Trainer.training_step = training_step
chain.run_chain = stages.run_chain = run_chain  # stages imported it by name

result = {"rank": rank, "processes": distributed.state().num_processes}
# map_sharded: order kept, equal shares (the padding repeats an item), every process gets everything
calls = []
result["map"] = distributed.map_sharded(lambda xs: calls.append(len(xs)) or [[x, rank] for x in xs], list(range(7)))
result["map_calls"] = calls
for name, run in [("sft", lambda: sft(params, paths)),
                  ("test", lambda: test(params, paths, root / "models/init", "test/init")),
                  ("dpo_sample", lambda: dpo_sample(params, paths, "iter1")),
                  ("dpo_train", lambda: dpo_train(params, paths, "hand"))]:
    if only is not None and name not in only:
        continue
    record = {"steps": [], "generate": []}
    metrics = run()
    result[name] = {"metrics": metrics, **record}
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{rank}.json").write_text(json.dumps(result))
