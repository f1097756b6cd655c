"""Validity checks of teacher completions (spec 3.3, with the split-once fix of spec 9 item 3).

Shared by the request stage (how many valid samples a question still lacks) and the build stage (which
candidates become training chains, and why the others were rejected).

A candidate is ``{"general_knowledge", "prefixes", "reasons", "answer"}``: the key-information sentence,
the verdict prefixes in the teacher's order (``"B is correct."``), the reason after each prefix, and the
option the completion declares correct.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from ..protocol import close_sentence

# Checked in this order; the first one present in a line splits it (spec 3.3).
DELIMITERS = ("Because ", "Because, ", "Although ", "While ")
PREFIX_RE = re.compile(r"[A-Z] is (correct|incorrect)\.")
_KEY_INFO_RE = re.compile(r"(Key Information.*?)(Explanations:)", re.S)
_EXPLANATIONS_RE = re.compile(r"Explanations:\s*")

# Rejection reasons, as counted in metrics/build.json.
LENGTH, NO_KEY_INFO, MALFORMED, NO_ANSWER = "length", "no_key_information", "malformed_verdict", "no_declared_answer"
INCOMPLETE, INCONSISTENT = "incomplete_option_count", "inconsistent_with_label"


def collate_content(content: str) -> list[str]:
    """Non-empty stripped lines; the key information and the first explanation always on lines 0 and 1."""
    m = _KEY_INFO_RE.search(content)
    if m:
        content = m.group(1).strip() + "\n" + content[m.start(2):]
    content = _EXPLANATIONS_RE.sub("Explanations: ", content)
    return [line.strip() for line in content.split("\n") if line.strip()]


def parse_completion(content: str, num_options: int) -> tuple[Optional[dict], Optional[str]]:
    """(candidate, None) or (None, rejection reason) for one completion's text."""
    lines = collate_content(content)
    if not lines or "Key Information:" not in lines[0]:
        return None, NO_KEY_INFO
    # Only the first line counts: a key information spread over lines pushes its tail into the
    # explanation slots below, and the candidate later fails the option count (spec 3.3).
    general_knowledge = close_sentence(lines[0].split("Key Information:", 1)[1])
    prefixes, reasons, answer = [], [], None
    for line in lines[1:num_options + 1]:
        if "Explanations:" in line and "correct" in line:
            part = line.rsplit("Explanations: ", 1)[-1]
        elif "is correct" in line or "is incorrect" in line:
            part = line
        else:
            continue
        delim = next((d for d in DELIMITERS if d in part), None)
        if delim is None:
            continue
        left, right = part.split(delim, 1)  # once: a reason may itself say "because" (spec 9 item 3)
        prefix = left.strip()
        if not PREFIX_RE.fullmatch(prefix):
            return None, MALFORMED
        if " correct" in prefix:
            answer = prefix[0]  # the last "correct" verdict wins, as in the original
        prefixes.append(prefix)
        reasons.append(right.strip())
    if answer is None:
        return None, NO_ANSWER
    return {"general_knowledge": general_knowledge, "prefixes": prefixes, "reasons": reasons,
            "answer": answer}, None


def completions(response: Optional[dict]) -> list[dict]:
    """The completions of a chat-completions response as completions.jsonl holds them: content and finish reason."""
    return [{"content": (c.get("message") or {}).get("content") or "", "finish_reason": c.get("finish_reason")}
            for c in (response or {}).get("choices") or []]


def count_valid(completions: list[dict], options: list[str]) -> tuple[int, bool]:
    """(how many of `completions` are valid, whether one was cut by length and its re-ask needs twice the room)."""
    _, double, candidates = filter_answer(completions, len(options))
    return sum(is_complete(c, options) for c in candidates), double


def filter_answer(choices: list[dict], num_options: int,
                  reasons: Optional[Counter] = None) -> tuple[int, bool, list[dict]]:
    """(failures, double_max_tokens, candidates) over a request's choices, as spec 3.3.

    `choices` are ``{"content", "finish_reason"}`` (completions.jsonl) or chat-completion choices
    (``{"message": {"content"}, "finish_reason"}``). Rejections are tallied into `reasons` when given.
    """
    failures, double, candidates = 0, False, []
    for choice in choices:
        content = choice["message"]["content"] if "message" in choice else choice.get("content")
        if choice.get("finish_reason") == "length":
            why = LENGTH
            double = True
        else:
            cand, why = parse_completion(content or "", num_options)
            if cand is not None:
                candidates.append(cand)
                continue
        failures += 1
        if reasons is not None:
            reasons[why] += 1
    return failures, double, candidates


def is_complete(candidate: dict, options: list[str]) -> bool:
    """One verdict per option, each option once (spec 3.2 step 8, which only counted them)."""
    letters = [p[0] for p in candidate["prefixes"]]
    return len(letters) == len(options) and sorted(letters) == sorted(options)


def analyses(candidate: dict) -> dict[str, str]:
    """{letter: reason} in the teacher's order, each reason closed as a sentence (spec 3.2 step 8)."""
    return {p[0]: close_sentence(r) for p, r in zip(candidate["prefixes"], candidate["reasons"])}


def majority(answers: list[str]) -> Optional[str]:
    """Most common answer; ties go to the first seen (Counter keeps insertion order)."""
    return Counter(answers).most_common(1)[0][0] if answers else None
