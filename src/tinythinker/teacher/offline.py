"""The offline teacher: the synthetic task's rationales, deterministic per request, with a share of realistic faults."""
from __future__ import annotations

import random

from ..io import DataError
from .backend import Backend
from .prompts import approx_tokens, message_tokens
from .store import request_key


class OfflineBackend(Backend):
    """The synthetic task's teacher: deterministic per request key, with a share of realistic faults."""

    def __init__(self, records: dict[str, dict], seed: int, fault_rate: float, wrong_fact_rate: float):
        self.records, self.seed, self.fault_rate, self.wrong_fact_rate = records, seed, fault_rate, wrong_fact_rate

    async def complete(self, body: dict, key: str, qid: str, salt: str) -> dict:
        from ..data.synthetic import FAULTS, offline_completion

        record = self.records.get(qid)
        if record is None or "meta" not in record:
            raise DataError(f"question {qid}: not in data/prepared/train.jsonl with its synthetic meta; "
                            "the offline teacher answers synthetic questions only")
        rng = random.Random(f"{self.seed}:{request_key(body, salt)}")  # the origin-free key: answers as before
        choices = []
        for i in range(body["n"]):
            fault = rng.choice(FAULTS) if rng.random() < self.fault_rate else None
            content, finish = offline_completion(record, rng, fault, rng.random() < self.wrong_fact_rate)
            choices.append({"index": i, "message": {"role": "assistant", "content": content},
                            "finish_reason": finish})
        prompt_tokens = message_tokens(body["messages"])
        completion_tokens = sum(approx_tokens(c["message"]["content"]) for c in choices)
        return {"object": "chat.completion", "model": "offline", "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
