"""Tokenizer stage and student loading on hand-made stage datasets (no download)."""
from pathlib import Path

import pytest

from tests.helpers import BASE
from tinythinker import protocol as P
from tinythinker.io import DataError, write_jsonl
from tinythinker.params import load
from tinythinker.paths import Paths
from tinythinker.lm.model import build_initial, load_student
from tinythinker.student.stages import pretrain, tokenizer_stage


BLOCK = P.question_block("Which is a metal?", [{"label": "A", "text": "wood"}, {"label": "B", "text": "iron, cast"}])


def stage_data(paths: Paths):
    recall = "Metals conduct electricity."
    write_jsonl(paths.stage_file("recall_analyze_summarize", "recall"),
                [{"qid": "q1", "input": P.recall_prompt(BLOCK), "target": recall}])
    write_jsonl(paths.stage_file("recall_analyze_summarize", "analyze"),
                [{"qid": "q1", "input": P.analyze_prompt(BLOCK, x, recall), "target": t, "option": x}
                 for x, t in (("A", "wood is not a metal."), ("B", "iron is a metal."))])
    write_jsonl(paths.stage_file("recall_analyze_summarize", "summarize"),
                [{"qid": "q1", "input": P.summarize_prompt(BLOCK, recall, {"A": "no.", "B": "yes."}),
                  "target": P.summarize_target("B")}])
    for split in ("valid", "test"):
        write_jsonl(paths.sft_data / f"{split}.jsonl",
                    [{"qid": "v", "block": "Is ice cold?\n(A) yes (B) no", "options": ["A", "B"], "gt": "A"}])
    write_jsonl(paths.corpus / "text.jsonl", [{"text": "iron is a metal."}, {"text": "wood is no metal."}])
    write_jsonl(paths.corpus / "probe.jsonl", [{"prompt": "iron is a", "answer": "metal", "held_out": False}])


WORKSPACE = stage_data  # what the `paths` fixture (tests/student/conftest.py) writes


PARAMS = BASE.replace(**{"student.embedded.vocab_size": 88, "student.embedded.d_model": 32,
                         "student.embedded.d_ff": 64, "student.embedded.d_kv": 8,
                         "student.embedded.num_layers": 1, "student.embedded.num_decoder_layers": 1,
                         "generation.max_new_tokens": 33,
    "student.pretrain.steps": 0})


def test_tokenizer_round_trip_and_reload(paths):
    from transformers import AutoTokenizer

    tokenizer_stage(PARAMS, paths)
    first = (paths.tokenizer / "tokenizer.json").read_bytes()
    tokenizer_stage(PARAMS, paths)  # deterministic: same data, same file
    assert (paths.tokenizer / "tokenizer.json").read_bytes() == first
    tok = AutoTokenizer.from_pretrained(paths.tokenizer)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert 20 < len(tok) <= 88  # 8 of them T5 sentinels (pretraining)
    text = "So the answer is option B."
    ids = tok(text).input_ids
    assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]  # </s> appended once
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id not in tok(P.summarize_prompt(BLOCK, "Metals conduct electricity.")).input_ids
    # frequent words are single pieces even on a tiny closed vocabulary
    assert tok.convert_ids_to_tokens(tok("iron is a metal.").input_ids) == ["▁iron", "▁is", "▁a", "▁metal", ".", "</s>"]
    # an option letter is one and the same token in the question block and in the analyze/summarize strings
    letter = tok.convert_tokens_to_ids("B")
    assert letter in tok(BLOCK).input_ids and letter in tok("Analyze: For option B,").input_ids
    assert letter in tok(P.summarize_target("B")).input_ids
    batch = tok([text, "iron"], padding=True)
    assert batch.input_ids[1][-1] == tok.pad_token_id and batch.attention_mask[1][-1] == 0


def test_tokenizer_needs_stage_data(tmp_path):
    with pytest.raises(DataError, match="no stage datasets"):
        tokenizer_stage(PARAMS, Paths(tmp_path))


def test_tokenizer_refuses_stage_data_of_another_training_split(paths):
    """The split emptied or changed after the build (which then refused it): the old data/sft is not trained on."""
    write_jsonl(paths.sft_data / "train_questions.jsonl", [{"qid": "q1", "block": BLOCK, "options": ["A", "B"],
                                                            "gt": "B"}])
    question = {"id": "q1", "question": "Which is a metal?", "answer": "B",
                "choices": [{"label": "A", "text": "wood"}, {"label": "B", "text": "iron, cast"}]}
    write_jsonl(paths.split("train"), [question])
    tokenizer_stage(PARAMS, paths)  # the split it was built from: fine
    for rows in ([], [{**question, "id": "q2"}]):
        write_jsonl(paths.split("train"), rows)
        with pytest.raises(DataError, match=r"data/sft: built from another training split than .*train.jsonl "
                                            rf"\(1 questions with chains, {len(rows)} in the split\); rerun"):
            tokenizer_stage(PARAMS, paths)


def test_load_student_embedded_and_checkpoint(paths, tmp_path):
    import torch

    tokenizer_stage(PARAMS, paths)
    model, tok = build_initial(PARAMS, paths)
    c = model.config
    assert (c.vocab_size, c.d_model, c.num_layers, c.num_decoder_layers) == (len(tok), 32, 1, 1)
    assert (c.decoder_start_token_id, c.pad_token_id, c.eos_token_id) == (0, 0, 1)
    g = model.generation_config
    assert (g.max_new_tokens, g.eos_token_id, g.pad_token_id, g.decoder_start_token_id) == (33, 1, 0, 0)
    again, _ = build_initial(PARAMS, paths)  # seeded initialisation
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(DataError, match="models/pretrained: no such model directory .*dvc repro pretrain"):
        load_student(PARAMS, paths)  # the embedded student starts where the pretrain stage left it
    pretrain(PARAMS, paths)  # steps 0: the initial student itself
    start, _ = load_student(PARAMS, paths)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))

    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    loaded, tok2 = load_student(PARAMS, paths, out)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert tok2("iron").input_ids == tok("iron").input_ids
    assert loaded.generation_config.max_new_tokens == 33


def test_hub_student_loads_at_its_revision(paths, monkeypatch):
    """student.revision reaches from_pretrained for the config (the family), the tokenizer stage and the initial
    model (Hub faked)."""
    import transformers

    asked = []
    tokenizer_stage(PARAMS, paths)  # a real tokenizer to hand out
    real_tok = transformers.AutoTokenizer.from_pretrained(paths.tokenizer)
    tiny, _ = build_initial(PARAMS, paths)

    def fake(kind, obj):
        def from_pretrained(name, revision=None, **kw):
            if str(name) == "google-t5/t5-small":
                asked.append((kind, revision))
                return obj
            return real_tok  # the saved tokenizer directory
        return staticmethod(from_pretrained)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake("config", tiny.config))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tokenizer", real_tok))
    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained", fake("model", tiny))
    hub = PARAMS.replace(**{"student.model": "google-t5/t5-small", "student.revision": "f" * 40})
    tokenizer_stage(hub, paths)
    model, _ = load_student(hub, paths)
    assert asked == [("config", "f" * 40), ("tokenizer", "f" * 40), ("config", "f" * 40), ("model", "f" * 40)]
    assert model is tiny


def test_tokenizer_is_the_same_file_in_every_process(tmp_path):
    """The Unigram trainer's internal sets iterate in a per-process random order; the saved vocabulary must
    not depend on it, or `dvc repro` on a second clone hashes a different models/tokenizer."""
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from tinythinker.params import load\n"
        "from tinythinker.data.synthetic import generate\n"
        "from tinythinker.lm.model import train_tokenizer\n"
        f"p = load({str(Path(__file__).resolve().parents[2] / 'params.yaml')!r})\n"
        "rows = [r for split in generate(p.dataset.synthetic, int(sys.argv[1])).values() for r in split]\n"
        "texts = [r['question'] + ' ' + ' '.join(f\"({c['label']}) {c['text']}\" for c in r['choices']) for r in rows]\n"
        "tok = train_tokenizer(texts, 300)\n"
        "print(json.dumps(json.loads(tok.backend_tokenizer.to_str())['model']['vocab']))\n")
    for seed in (1, 2):
        outs = {subprocess.run([sys.executable, "-c", script, str(seed)], capture_output=True, text=True,
                               check=True).stdout for _ in range(5)}
        assert len(outs) == 1, f"seed {seed}: {len(outs)} different vocabularies from 5 processes"
