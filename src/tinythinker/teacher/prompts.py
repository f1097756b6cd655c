"""Stage `prompt`: one rationalisation chat request per training question (spec 2), and its cost estimate.

The teacher is told the gold answer and asked to justify it: a key-information line, then one verdict line
per option (``X is correct. Because ...`` / ``X is incorrect. Because ...``), gold option first. The system
message is our instruction followed by few-shot exemplar blocks (spec 2.3); the exemplars come from the
shipped file of the task or from `teacher.exemplars` (same format as the original ``*_cot.json``).
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from ..data.prepare import read_split
from ..io import DataError, read_json, read_jsonl, write_json, write_jsonl
from ..params import Params, ParamsError
from ..paths import Paths

EXEMPLAR_DIR = Path(__file__).with_name("exemplars")

INSTRUCTION = (
    "You explain why the given answer to a multiple-choice question is right. The examples between ### lines "
    "show the expected reasoning. Start with one short sentence stating the key information or the core issue "
    "of the question, then judge every option in turn, using exactly this layout:\n\n"
    "Key Information: [the key information of the question in one sentence]\n"
    "Explanations: [Option] is [correct/incorrect]. Because [why, in terms of the option and the key "
    "information]\n\n"
    "Keep each explanation short and specific to its option, vary the wording and the arguments between "
    "options, and let every line support the final answer.\n"
)

class Price(NamedTuple):
    """USD per token of one model, live: input, output, and cached input where the model has that price
    (prompt caching bills the cached part of a prompt, `usage.prompt_tokens_details.cached_tokens`, lower)."""
    input: float
    output: float
    cached_input: Optional[float] = None


# The six models the original estimated for (spec 2.6), none with a cached-input price (prompt caching
# excludes gpt-4o-2024-05-13), and the two gpt-4o snapshots that have one.
PRICES = {
    "gpt-4o-2024-05-13": Price(5e-6, 15e-6),
    "gpt-4-turbo-2024-04-09": Price(10e-6, 30e-6),
    "gpt-4-0125-preview": Price(10e-6, 30e-6),
    "gpt-4-0613": Price(30e-6, 60e-6),
    "gpt-3.5-turbo-0125": Price(0.5e-6, 1.5e-6),
    "gpt-3.5-turbo-1106": Price(1e-6, 2e-6),
    "gpt-4o-2024-08-06": Price(2.5e-6, 10e-6, 1.25e-6),
    "gpt-4o-mini-2024-07-18": Price(0.15e-6, 0.6e-6, 0.075e-6),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills every token at half the live price
EXEMPLAR_KEYS = ("Q", "Options", "Key Information", "Explanations")
_OPTION_LABEL_RE = re.compile(r"(?:^|, )([A-Z])\. ")
_VERDICT_RE = re.compile(r"([A-Z]) is (correct|incorrect)\. Because \S")


# --- messages -----------------------------------------------------------------------------------------
def options_line(choices: list[dict]) -> str:
    """``A. text, B. text`` (spec 2.2); only the teacher sees this rendering, never a parser."""
    return ", ".join(f"{c['label']}. {c['text']}" for c in choices)


def exemplar_block(ex: dict) -> str:
    explanations = "\n".join(ex["Explanations"])
    return (f"\n###\n{ex['Q']}\nOptions: {ex['Options']}\nKey Information: {ex['Key Information']}\n"
            f"Explanations: {explanations}\n###\n")


def system_message(exemplars: list[dict], instruction: str = INSTRUCTION) -> str:
    return (instruction + "".join(exemplar_block(ex) for ex in exemplars)).strip()


def user_message(record: dict) -> str:
    """The rationalisation template (spec 2.4): gold option first, the others in label order."""
    gt = record["answer"]
    lines = [record["question"], f"Options: {options_line(record['choices'])}", "Key Information:",
             f"Explanations: {gt} is correct. Because"]
    lines += [f"{c['label']} is incorrect. Because" for c in record["choices"] if c["label"] != gt]
    return "\n".join(lines).strip()


def load_exemplars(path: str | Path) -> list[dict]:
    """A few-shot file in the spec 2.2 format; an error names the file and the bad exemplar's index."""
    path = Path(path)
    rows = read_json(path)
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON list of exemplars")
    for i, ex in enumerate(rows):
        def bad(msg: str):
            return DataError(f"{path}: exemplar {i}: {msg}")
        if not isinstance(ex, dict):
            raise bad("must be an object")
        missing = [k for k in EXEMPLAR_KEYS if k not in ex]
        if missing:
            raise bad(f"missing {', '.join(missing)}")
        for k in ("Q", "Options", "Key Information"):
            if not isinstance(ex[k], str) or not ex[k].strip():
                raise bad(f"{k} must be a non-empty string")
        labels = _OPTION_LABEL_RE.findall(ex["Options"])
        if len(labels) < 2 or labels != sorted(labels) or not ex["Options"].startswith(f"{labels[0]}. "):
            raise bad(f"Options must read 'A. text, B. text, ...', got {ex['Options']!r}")
        expl = ex["Explanations"]
        if not isinstance(expl, list) or not all(isinstance(e, str) for e in expl):
            raise bad("Explanations must be a list of strings")
        verdicts = [_VERDICT_RE.match(e) for e in expl]
        if not all(verdicts):
            j = verdicts.index(None)
            raise bad(f"Explanations[{j}] must read 'X is correct. Because ...' or 'X is incorrect. Because ...'")
        if [m.group(1) for m in verdicts] != labels:
            raise bad(f"Explanations must cover the options {', '.join(labels)} once each, in that order")
        if sum(m.group(2) == "correct" for m in verdicts) != 1:
            raise bad("exactly one explanation must say 'is correct.'")
    return rows


def pick_shots(exemplars: list[dict], num_shots: Optional[int], seed: int) -> list[dict]:
    """`num_shots` of them (all by default) in one seeded order, shared by every request (spec 2.2)."""
    k = len(exemplars) if num_shots is None else num_shots
    if not 0 <= k <= len(exemplars):
        raise ParamsError(f"teacher.num_shots: must be within 0..{len(exemplars)} (the exemplar file's size), got {k}")
    return random.Random(seed).sample(exemplars, k)


def build_requests(params: Params, train: list[dict]) -> list[dict]:
    from ..data.tasks import get_task

    t = params.teacher
    task = get_task(params.dataset.name)
    exemplars = load_exemplars(Path(t.exemplars) if t.exemplars else EXEMPLAR_DIR / task.exemplars)
    system = system_message(pick_shots(exemplars, t.num_shots, params.seed))
    n = t.samples or task.teacher.samples
    extra = {"temperature": t.temperature} if t.send_temperature else {}
    return [{"id": r["id"], "gt": r["answer"], "options": [c["label"] for c in r["choices"]],
             "body": {"model": t.model,
                      "messages": [{"role": "system", "content": system}, {"role": "user", "content": user_message(r)}],
                      t.max_tokens_param: t.max_tokens, "n": n, **extra}}
            for r in train]


def limit_key(body: dict) -> str:
    """The body's output-token limit field: `max_tokens`, or `max_completion_tokens` for reasoning models."""
    return "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"


# --- cost estimate --------------------------------------------------------------------------------------
def approx_tokens(text: str) -> int:
    """Offline stand-in for a BPE count: about four characters a token for English text."""
    return math.ceil(len(text) / 4)


def _tiktoken_counter(model: str) -> Optional[Callable[[str], int]]:
    """tiktoken's exact count, but only when its encoding file is already cached: this stage never downloads."""
    try:
        import tiktoken
        import tiktoken.model
        name = tiktoken.model.encoding_name_for_model(model)
    except (ImportError, KeyError):
        return None
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    cache = (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
             or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    if not os.path.exists(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())):
        return None
    enc = tiktoken.get_encoding(name)
    return lambda text: len(enc.encode(text))


def message_tokens(messages: list[dict], count: Callable[[str], int] = approx_tokens) -> int:
    """Chat-format count: 3 per message plus its role and content, and 3 priming the reply (the cookbook's
    recipe; the original added 2 per message list, spec 9 item 8)."""
    return sum(3 + count(m["role"]) + count(m["content"]) for m in messages) + 3


def estimate(requests: list[dict], count: Optional[Callable[[str], int]] = None) -> dict:
    """Input tokens of every request, the output upper bound (every sample uses max_tokens), USD per model."""
    exact = count is not None
    count = count or approx_tokens
    inp = sum(message_tokens(r["body"]["messages"], count) for r in requests)
    out = sum(r["body"][limit_key(r["body"])] * r["body"]["n"] for r in requests)
    est = {"requests": len(requests), "input_tokens": inp, "output_tokens_max": out,
           "input_tokens_mean": round(inp / max(1, len(requests)), 1),
           "tokens_counted_by_tiktoken": int(exact)}  # 0: ceil(characters / 4)
    for model, price in PRICES.items():  # live prices, nothing cached: the most a run can cost
        est[f"usd_input_{model}"] = round(inp * price.input, 4)
        est[f"usd_output_max_{model}"] = round(out * price.output, 4)
        est[f"usd_total_{model}"] = round(inp * price.input + out * price.output, 4)
    return est


def prompt(params: Params, paths: Paths) -> None:
    requests = build_requests(params, read_split(paths, "train"))  # re-checked: it goes to a paid teacher
    write_jsonl(paths.requests, requests)
    write_json(paths.metric("teacher_cost"), estimate(requests, _tiktoken_counter(params.teacher.model)))


REQUEST_FIELDS = ("id", "gt", "options", "body")


def read_requests(paths: Paths) -> list[dict]:
    """data/teacher/requests.jsonl, at least one request (an empty one would pass every later check with nothing),
    each for a question of the training split it was built from (a file left from another split is stale)."""
    requests = read_jsonl(paths.requests, REQUEST_FIELDS)
    if not requests:
        raise DataError(f"{paths.requests}: no requests (an empty training split?); rerun `dvc repro prompt`")
    train = paths.split("train")
    ids = {row["id"] for row in read_jsonl(train, ["id"])} if train.exists() else None
    if ids is not None and (not ids or any(r["id"] not in ids for r in requests)):
        raise DataError(f"{paths.requests}: built for another training split than {train} ({len(requests)} "
                        f"requests, {len(ids)} training questions); rerun `dvc repro prompt`")
    return requests

