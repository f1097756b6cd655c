"""The written contracts: a student family and a DPO trainer are registered from here alone (no change to src/) and
the stages run on them: tokenizer, pretrain, sft and dpo-train pick the new family and its trainer by KIND."""
from collections import Counter

import pytest

from tests.helpers import ANALYZE, RECALL, SFT_PARAMS
from tinythinker.io import read_json, write_jsonl
from tinythinker.reflect import dpo_seq2seq
from tinythinker.reflect.trainers import TRAINERS, PreferenceTrainer, register_trainer, trainer_for
from tinythinker.lm import seq2seq
from tinythinker.lm.family import EMBEDDED, FAMILIES, StudentFamily, family_of, register_family

PARAMS = SFT_PARAMS.replace(**{
    "student.model": "embedded-toy", "sft.epochs": 1.0, "generation.max_new_tokens": 8,
    "dpo.batch_size": 2, "dpo.passes": 1, "dpo.iterations": {"iter1": {"init": "models/sft"}}})
pytestmark = pytest.mark.usefixtures("one_thread")


class Toy:
    """The T5 family under a new KIND: every member is seq2seq's, its models carry a mark in their config (which is
    how `family_of` tells a toy checkpoint from a T5 one), and it counts what the stages ask of it."""

    KIND = "toy"

    def __init__(self):
        self.calls = Counter()

    def __getattr__(self, name):
        return getattr(seq2seq, name)

    def claims(self, config) -> bool:
        return getattr(config, "toy_family", False)

    def build_embedded(self, params, tokenizer):
        self.calls["build_embedded"] += 1
        model = seq2seq.build_embedded(params, tokenizer)
        model.config.toy_family = True
        return model

    def sft_data(self, params, stages, tokenizer):
        self.calls["sft_data"] += 1
        return seq2seq.sft_data(params, stages, tokenizer)

    def finish(self, trainer) -> None:
        self.calls["finish"] += 1


@pytest.fixture(autouse=True)
def toy():
    """The toy family and its DPO trainer (the T5 one) registered for this test only."""
    saved = dict(FAMILIES), dict(EMBEDDED), dict(TRAINERS)
    family = register_family(Toy(), embedded="embedded-toy")
    register_trainer(dpo_seq2seq, kind="toy")
    yield family
    for registry, before in zip((FAMILIES, EMBEDDED, TRAINERS), saved):
        registry.clear()
        registry.update(before)


def test_the_shipped_families_and_trainers_keep_the_contracts():
    for kind in ("seq2seq", "causal"):
        assert isinstance(FAMILIES[kind], StudentFamily) and isinstance(TRAINERS[kind], PreferenceTrainer)
        assert trainer_for(FAMILIES[kind]) is TRAINERS[kind]
    with pytest.raises(TypeError, match="lacks"):
        register_family(type("Half", (), {"KIND": "half"})())


def test_a_registered_family_runs_sft_and_dpo_without_touching_src(toy, paths):
    from tinythinker.reflect.stages import dpo_train
    from tinythinker.lm.model import family, load_student
    from tinythinker.student.stages import sft

    assert toy.calls["build_embedded"] == 1  # the pretrain stage (the `paths` fixture) built the toy
    m = sft(PARAMS, paths)
    assert m["train_steps"] > 0 and toy.calls["sft_data"] == 1 and toy.calls["finish"] == 1
    model, _ = load_student(PARAMS, paths, paths.sft_model)
    assert family(PARAMS, paths.sft_model) is toy and family_of(model.config) is toy
    assert FAMILIES["seq2seq"].claims(model.config)  # a T5 too: the later registered family is asked first

    for kind, rows in (("recall", RECALL), ("analyze", ANALYZE), ("summarize", [])):
        write_jsonl(paths.pairs("iter1", kind), rows)
    d = dpo_train(PARAMS, paths, "iter1")
    assert d["steps"] > 0 and (d["recall_pairs"], d["analyze_pairs"]) == (3, 2)
    assert read_json(paths.metric("dpo/iter1")) == d and (paths.dpo_model("iter1") / "config.json").exists()
    assert family(PARAMS, paths.dpo_model("iter1")) is toy
