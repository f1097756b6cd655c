"""The text protocol between stages, byte-exact with the original TinyThinker (spec 3.6, 4, 5.5, 6.2).

Teacher build, SFT, DPO sampling and evaluation all render and parse prompts through this module only:
a change here changes every stage consistently, and nothing else may spell these strings.

    question block   {question}\\n(A) text (B) text ...
    recall prompt    {block}\\nRecall:
    analyze prompt   {block}\\nRecall: {recall}\\nAnalyze: For option X,
    summarize prompt {block}\\nRecall: {recall}\\nAnalyze: For option A, .. For option B, ..\\nSummarize:
    summarize target So the answer is option X.

The ablation stage types drop Recall and/or Analyze from the same strings (spec 4). A decoder-only student reads
each stage as one sequence, prompt + `completion(target)`, closed by its tokenizer's EOS.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from .io import DataError, iter_jsonl

# The fields a reader of each file needs and their JSON types (DEVELOPERS.md "File formats"); a row without one,
# or with another type, is named by line (io.iter_jsonl).
COMPLETION_FIELDS = {"id": str, "completions": list}  # data/teacher/completions.jsonl
STAGE_FIELDS = {"qid": str, "input": str, "target": str}  # data/sft/<stage_type>/<stage>.jsonl, recall_single.jsonl
QUESTION_FIELDS = {"qid": str, "block": str, "options": list, "gt": str}  # data/sft/{valid,test,train_questions}.jsonl
CHAIN_FIELDS = {"qid": str, "recall": str, "analyses": dict}  # data/sft/chains.jsonl
PAIR_FIELDS = {"qid": str, "prompt": str, "chosen": str, "rejected": str}  # data/dpo/<iter>/{recall,analyze}_pairs.jsonl
TEXT_FIELDS = {"text": str}  # data/corpus/text.jsonl: the embedded student's pretraining text
PROBE_FIELDS = {"prompt": str, "answer": str, "held_out": bool}  # data/corpus/probe.jsonl

RECALL = "Recall:"
ANALYZE = "Analyze:"
SUMMARIZE = "Summarize:"
ANSWER_RE = re.compile(r"the answer is option ([A-Z])\.")
OPTION_RE = re.compile(r"For option ([A-Z]),")
_SENTENCE_END = (".", '"', "'")

# Which steps of the chain each SFT stage type runs (spec 5.1); summarize always closes the chain.
STAGES = {
    "recall_analyze_summarize": ("recall", "analyze", "summarize"),
    "recall_summarize": ("recall", "summarize"),
    "analyze_summarize": ("analyze", "summarize"),
    "summarize": ("summarize",),
}

# The pair kinds of phase 2 (data/dpo/<iter>/<kind>_pairs.jsonl), in the order the DPO trainers concatenate and
# the curriculum interleaves them; `metrics/dpo/<iter>.json` counts them as `<kind>_pairs`.
PAIR_KINDS = ("recall", "analyze", "summarize")

# The curves every training run logs (dvclive, metrics/<stage>_live/) and the names its metrics read: the Trainer's
# and TRL's vocabulary. A Trainer log key `eval_x` is `eval/x`, a key with a slash (TRL's `rewards/margins`) stays,
# any other is `train/x` (transformers' own rewrite for trackers).
TRAIN_LOSS, EVAL_ACCURACY = "train/loss", "eval/accuracy"
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


def curve_name(key: str) -> str:
    """The curve a Trainer log key is drawn as: eval_accuracy -> eval/accuracy, loss -> train/loss."""
    if key.startswith("eval_"):
        return f"eval/{key[5:]}"
    return key if "/" in key else f"train/{key}"


def pair_counts(counts) -> dict:
    """`{<kind>_pairs: n}` for every pair kind, from a mapping kind -> count (missing kinds: None)."""
    return {f"{k}_pairs": counts.get(k) for k in PAIR_KINDS}


def question_block(question: str, choices: Sequence[Mapping[str, str]]) -> str:
    """Built from structured choices, so option texts containing ", " survive (fixes spec 9.2)."""
    opts = " ".join(f"({c['label']}) {c['text']}" for c in choices)
    return f"{question}\n{opts}"


def option_prefix(letter: str) -> str:
    return f"For option {letter},"


def close_sentence(text: str) -> str:
    """Strip, and end with a period unless the text already ends with . " or ' (spec 3.2 step 8, 5.5)."""
    text = text.strip()
    return text if text.endswith(_SENTENCE_END) else text + "."


def analyses_text(analyses: Mapping[str, str], order: Optional[Iterable[str]] = None) -> str:
    """``For option A, {a} For option B, {b}``; alphabetical unless an explicit order is given."""
    letters = list(order) if order is not None else sorted(analyses)
    return " ".join(f"{option_prefix(x)} {analyses[x]}" for x in letters).strip()


def recall_prompt(block: str) -> str:
    return f"{block}\n{RECALL}"


def analyze_prompt(block: str, letter: str, recall: Optional[str] = None) -> str:
    head = f"{block}\n{RECALL} {recall}" if recall is not None else block
    return f"{head}\n{ANALYZE} {option_prefix(letter)}"


def summarize_prompt(block: str, recall: Optional[str] = None, analyses: Optional[Mapping[str, str]] = None,
                     order: Optional[Iterable[str]] = None) -> str:
    parts = [block]
    if recall is not None:
        parts.append(f"{RECALL} {recall}")
    if analyses is not None:
        parts.append(f"{ANALYZE} {analyses_text(analyses, order)}")
    parts.append(SUMMARIZE)
    return "\n".join(parts)


def summarize_target(letter: str) -> str:
    return f"So the answer is option {letter}."


def completion(target: str) -> str:
    """A stage target as the continuation of its prompt in one decoder-only sequence: prompt + " " + target, as the
    next stage's prompt spells it (``Recall: {recall}``); the prompt ends on a word boundary, so a tokenizer gives the
    prompt the same tokens alone and at the head of the sequence (the loss mask of the completion relies on it)."""
    return f" {target}"


def extract_answer(text: str) -> Optional[str]:
    """The option letter of the first ``the answer is option X.``; None when there is none (counts wrong)."""
    m = ANSWER_RE.search(text)
    return m.group(1) if m else None


def split_analyses(text: str) -> dict[str, str]:
    """Inverse of `analyses_text`: ``For option A, x For option B, y`` -> {"A": "x", "B": "y"}."""
    marks = list(OPTION_RE.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.setdefault(m.group(1), text[m.end():end].strip())
    return out


def read_questions(path: Path) -> list[dict]:
    """A question file of data/sft (valid, test, train_questions), checked as `prepare` checks a split: a unique
    qid per row, options distinct capital letters, the answer one of them, and at least one question (an empty
    split would score 0 of 0). Errors name the file and line."""
    rows, seen = [], {}
    for lineno, q in iter_jsonl(path, QUESTION_FIELDS):
        opts = q["options"]
        if not opts or len(set(opts)) != len(opts) or not all(isinstance(o, str) and re.fullmatch("[A-Z]", o)
                                                                for o in opts):
            raise DataError(f"{path}:{lineno}: options must be distinct capital letters, not {opts!r}")
        if q["gt"] not in opts:
            raise DataError(f"{path}:{lineno}: answer {q['gt']!r} is not one of the options {opts}")
        if q["qid"] in seen:
            raise DataError(f"{path}:{lineno}: duplicate qid {q['qid']!r} (first at line {seen[q['qid']]})")
        seen[q["qid"]] = lineno
        rows.append(q)
    if not rows:
        raise DataError(f"{path}: no questions (an empty split; rebuild it with `dvc repro`)")
    return rows

