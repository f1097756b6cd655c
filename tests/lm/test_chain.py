"""The generation chain: byte-exact prompts per stage type, batching order, answer extraction, voting."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import BASE
from tinythinker.params import load
from tinythinker.lm.chain import GREEDY, Decoding, accuracy, generate, majority_vote, run_chain


B1 = "Which is a metal?\n(A) wood (B) iron, cast (C) glass"
B2 = "Is ice cold?\n(A) yes (B) no"
QS = [{"qid": "q1", "block": B1, "options": ["B", "C", "A"], "gt": "B"},  # unsorted letters on purpose
      {"qid": "q2", "block": B2, "options": ["A", "B"], "gt": "A"}]


class Enc(dict):
    def to(self, device):
        return self


class FakeTokenizer:
    """Encodes a prompt as its index in a registry, so the model sees the exact string."""

    def __init__(self):
        self.texts = []

    def __call__(self, texts, return_tensors=None, padding=None):
        ids = list(range(len(self.texts), len(self.texts) + len(texts)))
        self.texts += texts
        return Enc(input_ids=ids, attention_mask=[1] * len(ids))

    def batch_decode(self, outputs, skip_special_tokens=False):
        assert skip_special_tokens
        return outputs


class FakeModel:
    """Records every prompt and decoding; answers as a function of the prompt alone."""
    device = "cpu"
    config = SimpleNamespace(is_encoder_decoder=True)  # the seq2seq family: outputs hold new tokens only

    def __init__(self, tok, answer=lambda p: f"  echo {len(p)} "):
        self.tok, self.answer, self.training = tok, answer, True
        self.prompts, self.calls = [], []

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def generate(self, input_ids, attention_mask, num_return_sequences=1, **kw):
        assert not self.training
        prompts = [self.tok.texts[i] for i in input_ids]
        self.prompts += prompts
        self.calls.append((len(prompts), kw | {"num_return_sequences": num_return_sequences}))
        # as transformers does: the k sequences of a prompt are consecutive rows
        return [self.answer(p).rstrip() + (f" #{j}" if num_return_sequences > 1 else "")
                for p in prompts for j in range(num_return_sequences)]


def teacherish(p):
    if p.endswith("Recall:"):
        return " metals conduct " if p.startswith("Which") else "ice is frozen."
    if "Analyze: For option" in p and p.endswith(","):
        return f" option {p[-2]} text"
    return "So the answer is option B." if p.startswith("Which") else "I think A"


def chain(stage_type, **kw):
    tok = FakeTokenizer()
    model = FakeModel(tok, teacherish)
    return model, run_chain(model, tok, QS, stage_type=stage_type, batch_size=3, **kw)


def test_full_chain_prompts_byte_exact():
    model, res = chain("recall_analyze_summarize")
    r1, r2 = "Recall: metals conduct.", "Recall: ice is frozen."
    assert model.prompts == [
        f"{B1}\nRecall:", f"{B2}\nRecall:",
        # analyze: one pass over all (question, option) pairs, letters sorted, batched longest first
        f"{B1}\n{r1}\nAnalyze: For option A,", f"{B1}\n{r1}\nAnalyze: For option B,",
        f"{B1}\n{r1}\nAnalyze: For option C,",
        f"{B2}\n{r2}\nAnalyze: For option A,", f"{B2}\n{r2}\nAnalyze: For option B,",
        f"{B1}\n{r1}\nAnalyze: For option A, option A text. For option B, option B text. "
        "For option C, option C text.\nSummarize:",
        f"{B2}\n{r2}\nAnalyze: For option A, option A text. For option B, option B text.\nSummarize:"]
    assert [n for n, _ in model.calls] == [2, 3, 2, 2]  # batch_size 3: no per-example generate calls
    assert model.training  # training mode restored
    assert res[0] == {"qid": "q1", "gt": "B", "recall": "metals conduct.",
                      "analyses": {"A": "option A text.", "B": "option B text.", "C": "option C text."},
                      "summary": "So the answer is option B.", "prediction": "B", "prompt": model.prompts[-2]}
    assert res[1]["prediction"] is None and res[1]["summary"] == "I think A"
    assert accuracy(res) == 50.0


@pytest.mark.parametrize("stage_type,expected", [
    ("summarize", [f"{B1}\nSummarize:", f"{B2}\nSummarize:"]),
    ("recall_summarize", [f"{B1}\nRecall:", f"{B2}\nRecall:",
                          f"{B1}\nRecall: metals conduct.\nSummarize:", f"{B2}\nRecall: ice is frozen.\nSummarize:"]),
    ("analyze_summarize", [f"{B1}\nAnalyze: For option A,", f"{B1}\nAnalyze: For option B,",
                           f"{B1}\nAnalyze: For option C,", f"{B2}\nAnalyze: For option A,",
                           f"{B2}\nAnalyze: For option B,",
                           f"{B1}\nAnalyze: For option A, option A text. For option B, option B text. "
                           "For option C, option C text.\nSummarize:",
                           f"{B2}\nAnalyze: For option A, option A text. For option B, option B text.\nSummarize:"]),
])
def test_ablation_stage_types(stage_type, expected):
    model, res = chain(stage_type)
    assert model.prompts == expected
    assert [r["prompt"] for r in res] == expected[-2:]
    assert ("recall" in stage_type) == (res[0]["recall"] is not None)
    assert ("analyze" in stage_type) == (res[0]["analyses"] is not None)


def test_given_recalls_and_decodings():
    sample = Decoding(do_sample=True, temperature=0.7, top_k=0, top_p=0.9, max_new_tokens=17)
    model, res = chain("recall_analyze_summarize", recalls=["given one", "given two."], analyze=sample)
    assert not any(p.endswith("Recall:") for p in model.prompts)
    assert res[0]["recall"] == "given one." and res[1]["recall"] == "given two."
    assert model.prompts[0] == f"{B1}\nRecall: given one.\nAnalyze: For option A,"
    analyze_kw, summarize_kw = model.calls[0][1], model.calls[-1][1]
    assert analyze_kw == {"max_new_tokens": 17, "num_beams": 1, "do_sample": True, "temperature": 0.7,
                          "top_k": 0, "top_p": 0.9, "num_return_sequences": 1}
    assert summarize_kw == {"max_new_tokens": 200, "num_beams": 1, "do_sample": False, "num_return_sequences": 1}


def test_generate_returns_input_order():
    tok = FakeTokenizer()
    model = FakeModel(tok)
    prompts = ["x" * n for n in (3, 9, 1, 7, 2, 12)]
    assert generate(model, tok, prompts, GREEDY, batch_size=2) == [f"echo {len(p)}" for p in prompts]
    assert [len(p) for p in model.prompts] == sorted((len(p) for p in prompts), reverse=True)
    assert generate(model, tok, [], GREEDY, batch_size=2) == []


def test_repeated_prompts_are_encoded_once():
    """DPO sampling runs every question `dpo.samples` times: a repeated prompt goes to the model once."""
    tok = FakeTokenizer()
    model = FakeModel(tok)
    prompts = ["aaa", "bb", "aaa", "c", "bb", "aaa", "dddd"]
    # greedy: one row per distinct prompt, the text copied to every occurrence
    assert generate(model, tok, prompts, GREEDY, batch_size=8) == [f"echo {len(p)}" for p in prompts]
    assert model.prompts == ["dddd", "aaa", "bb", "c"] and [k["num_return_sequences"] for _, k in model.calls] == [1]

    # sampling, every prompt k times (DPO's steps): one row per prompt drawing k sequences, about batch_size
    # sequences per call (here 4: two rows of 2, then one)
    tok = FakeTokenizer()
    model = FakeModel(tok)
    sample = Decoding(do_sample=True, max_new_tokens=5)
    out = generate(model, tok, ["bb", "aaa", "c", "aaa", "c", "bb"], sample, batch_size=4)
    assert out == ["echo 2 #0", "echo 3 #0", "echo 1 #0", "echo 3 #1", "echo 1 #1", "echo 2 #1"]
    assert [(n, k["num_return_sequences"]) for n, k in model.calls] == [(2, 2), (1, 2)]
    assert model.prompts == ["aaa", "bb", "c"]

    # sampling, prompts repeated unevenly: every copy its own row (calls split by k would be more and smaller)
    tok = FakeTokenizer()
    model = FakeModel(tok)
    assert generate(model, tok, prompts, sample, batch_size=4) == [f"echo {len(p)}" for p in prompts]
    assert len(model.prompts) == 7 and {k["num_return_sequences"] for _, k in model.calls} == {1}

    # share_prompts=False: every copy on its own (bench/'s baseline)
    tok = FakeTokenizer()
    model = FakeModel(tok)
    assert len(generate(model, tok, prompts, sample, batch_size=4, share_prompts=False)) == 7
    assert len(model.prompts) == 7 and {k["num_return_sequences"] for _, k in model.calls} == {1}


def test_shared_sampling_draws_from_the_same_distribution():
    """k copies drawn as num_return_sequences=k, or one by one: both match the model's own next-token distribution."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from tinythinker.lm.model import train_tokenizer
    tok = train_tokenizer(iter(["alpha beta gamma delta", "one two three four five six"] * 5), 40)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=16, d_ff=32, d_kv=4, num_heads=2,
                                                num_layers=1, decoder_start_token_id=0, pad_token_id=0,
                                                eos_token_id=1)).eval()
    start = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():  # a peaked distribution over real tokens: a few carry most of the mass
        enc = tok(["alpha beta"], return_tensors="pt")
        h = model(**enc, decoder_input_ids=start, output_hidden_states=True).decoder_hidden_states[-1][0, -1]
        model.lm_head.weight.mul_(8)
        model.lm_head.weight[tok.all_special_ids] = -50 * h / h.norm() ** 2  # </s>, <pad>, <unk> out of reach
        probs = model(**enc, decoder_input_ids=start).logits[0, -1].softmax(-1)
    expected: dict[str, float] = {}  # what generate returns (a decoded, stripped token) -> its probability
    for t, p in enumerate(probs.tolist()):
        text = tok.decode([t], skip_special_tokens=True).strip()
        expected[text] = expected.get(text, 0.0) + p
    top = sorted(expected, key=expected.get, reverse=True)[:3]
    assert sum(expected[t] for t in top) > 0.6 and max(expected.values()) < 0.9  # peaked, not certain
    n = 3000
    sample = Decoding(do_sample=True, temperature=1.0, max_new_tokens=1)
    for share in (True, False):
        torch.manual_seed(1)
        texts = generate(model, tok, ["alpha beta"] * n + ["one two"] * 5, sample, batch_size=512, share_prompts=share)
        assert len(texts) == n + 5
        for t in top:
            freq, q = texts[:n].count(t) / n, expected[t]
            assert abs(freq - q) < 5 * (q * (1 - q) / n) ** 0.5, (share, t, freq, q)


def test_generate_real_tiny_model_batch_invariant():
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from tinythinker.lm.model import train_tokenizer
    texts = [f"{q['block']}\nRecall:" for q in QS] + ["So the answer is option A.", "metals conduct."] * 5
    tok = train_tokenizer(iter(texts), 60)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                                num_layers=1, decoder_start_token_id=0, pad_token_id=0,
                                                eos_token_id=1))
    prompts = texts[:2] + ["Is it?", "a b c d e f g h i j k l m n"]
    d = Decoding(max_new_tokens=6)
    one = generate(model, tok, prompts, d, batch_size=1)
    assert generate(model, tok, prompts, d, batch_size=4) == one and all(isinstance(t, str) for t in one)
    res = run_chain(model, tok, QS, analyze=d, recall=d, summarize=d, batch_size=4)
    assert [r["qid"] for r in res] == ["q1", "q2"] and set(res[0]["analyses"]) == {"A", "B", "C"}


def test_accuracy_and_majority_vote():
    def run(*preds):
        return [{"prediction": p, "gt": "A"} for p in preds]
    assert accuracy(run("A", None, "B", "A")) == 50.0 and accuracy([]) == 0.0
    runs = [run("A", "B", None, None, "C"), run("B", "B", "C", None, None), run("B", "A", None, None, "D")]
    # q1: B x2 beats A; q2: B x2; q3: None is no vote -> C; q4: all None; q5: C/D tie -> first seen C
    assert majority_vote(runs) == ["B", "B", "C", None, "C"]
    assert majority_vote([run("D", "A")]) == ["D", "A"]


def test_evaluate_stage(tmp_path):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from tinythinker.io import read_json, read_jsonl, write_jsonl
    from tinythinker.paths import Paths
    from tinythinker.student import stages
    from tinythinker.lm.model import train_tokenizer

    paths = Paths(tmp_path)
    write_jsonl(paths.sft_data / "test.jsonl", QS)
    tok = train_tokenizer(iter([q["block"] for q in QS] + ["So the answer is option A."] * 3), 60)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                                num_layers=1, decoder_start_token_id=0, pad_token_id=0,
                                                eos_token_id=1))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")

    p = BASE.replace(**{"generation.strategy": "sample", "generation.times": 3, "generation.max_new_tokens": 5})
    m = stages.test(p, paths, tmp_path / "m", "test/x")
    assert set(m) == {"accuracy", "questions", "accuracy_run_1", "accuracy_run_2", "accuracy_run_3",
                      "majority_accuracy"} and m["questions"] == 2
    rows = read_jsonl(paths.predictions / "test" / "x.jsonl")
    assert [(r["qid"], r["run"]) for r in rows] == [(q, t) for t in (1, 2, 3) for q in ("q1", "q2")]
    assert set(rows[0]) == {"qid", "run", "recall", "analyses", "summary", "prediction", "gt"}
    assert read_json(paths.metric("test/x")) == m
    assert len({r["recall"] for r in rows if r["qid"] == "q1"}) > 1  # sampled runs differ

    g = stages.test(BASE.replace(**{"generation.times": 2, "generation.max_new_tokens": 5}), paths,
                      tmp_path / "m", "greedy")
    rows = read_jsonl(paths.predictions / "greedy.jsonl")
    assert rows[0] | {"run": 2} == rows[2] and g["accuracy_run_1"] == g["accuracy_run_2"]
