"""Stage `publish` (models/final + a Hugging Face model card) on a small metrics fixture, and the upload up to the
Hub call (HfApi patched: the Hub is out of reach here)."""
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tinythinker.cli import app
from tinythinker.io import write_json
from tinythinker.params import load
from tinythinker.paths import Paths
from tinythinker.results.publish import KEY_PARAMS, PublishError, model_card, publish, push

REPO = Path(__file__).resolve().parents[2]
BASE = load(REPO / "params.yaml")  # params.yaml holds every value
PARAMS = BASE.replace(**{
    "dataset.name": "csqa", "student.model": "google-t5/t5-small", "teacher.backend": "openai",
    "sft.learning_rate": 5e-4, "dpo.iterations": {"iter1": {"init": "models/sft"},
                                                  "iter2": {"init": "models/dpo/iter1"}}})
ROWS = [{"model": "sft", "step": 0, "valid_accuracy": 55.1, "test_accuracy": 54.321},
        {"model": "iter1", "step": 1, "valid_accuracy": 57.0, "test_accuracy": 56.0},
        {"model": "iter2", "step": 2, "valid_accuracy": 58.25, "test_accuracy": 57.6789, "test_ci95": [55.5, 59.8]}]


def fixture_repo(root: Path, final: str = "iter2", config: dict | None = None) -> Paths:
    paths = Paths(root)
    for name, model in (("sft", paths.sft_model), ("iter1", paths.dpo_model("iter1")),
                        ("iter2", paths.dpo_model("iter2"))):
        model.mkdir(parents=True)
        (model / "config.json").write_text(json.dumps(
            {"model": name, **(config or {"model_type": "t5", "is_encoder_decoder": True})}))
        (model / "model.safetensors").write_bytes(name.encode() * 10)
    # the final model is the last row (an SFT-only run has one row)
    write_json(paths.metric("iterations"), ROWS[:[r["model"] for r in ROWS].index(final) + 1])
    return paths


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_card_front_matter_and_body_from_params_and_metrics(tmp_path):
    meta, body = split_card(model_card(PARAMS, fixture_repo(tmp_path)))
    assert meta["base_model"] == "google-t5/t5-small" and meta["datasets"] == ["tau/commonsense_qa"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text2text-generation"
    result = meta["model-index"][0]["results"][0]
    assert meta["model-index"][0]["name"] == "tinythinker-csqa-t5-small"
    assert result["dataset"]["type"] == "tau/commonsense_qa"
    assert result["metrics"][0]["type"] == "accuracy" and result["metrics"][0]["value"] == 57.68
    # metrics of a run before the interval was reported have none
    assert "| sft | 55.10 | 54.32 | – |" in body and "| iter2 | 58.25 | 57.68 | 55.50-59.80 |" in body
    assert "the final model is **iter2**" in body
    assert "`gpt-4o-2024-05-13` through an OpenAI-compatible chat API, 8 rationales per training question" in body
    assert "2 iterations of DPO" in body and "1 x sigmoid + 0.5 x sft" in body
    assert "Recall:" in body and "Analyze: For option A," in body and "Summarize:" in body
    assert "t5" in meta["tags"]


def test_card_of_a_decoder_only_student(tmp_path):
    """The architecture comes from the final model's config: a decoder-only model is a text-generation model."""
    p = PARAMS.replace(**{"student.model": "Qwen/Qwen2.5-0.5B", "student.revision": None})
    meta, body = split_card(model_card(p, fixture_repo(tmp_path, config={"model_type": "qwen2"})))
    assert meta["pipeline_tag"] == "text-generation" and "qwen2" in meta["tags"] and "t5" not in meta["tags"]
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B"
    assert meta["model-index"][0]["name"] == "tinythinker-csqa-Qwen2.5-0.5B"
    reported = yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert list(reported) == list(KEY_PARAMS)
    assert reported["sft.learning_rate"] == 5e-4 and reported["dpo.max_questions"] == PARAMS.dpo.max_questions
    assert reported["dpo.iterations"] == {"iter1": "models/sft", "iter2": "models/dpo/iter1"}
    assert "Smoke run" not in body


def test_embedded_student_and_smoke_run_have_no_hub_ids(tmp_path):
    p = PARAMS.replace(**{"dataset.name": "synthetic", "student.model": "embedded", "dataset.limit": 50})
    meta, body = split_card(model_card(p, fixture_repo(tmp_path)))
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "synthetic"
    assert "capped at 50 questions" in body


@pytest.mark.parametrize("final", ["iter2", "sft"])
def test_publish_writes_the_final_model_with_its_card(tmp_path, final):
    paths = fixture_repo(tmp_path, final)
    out = publish(PARAMS, paths)
    assert out == paths.final_model and sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    source = paths.sft_model if final == "sft" else paths.dpo_model(final)
    assert (out / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    card = (out / "README.md").read_text()
    assert card == model_card(PARAMS, paths)
    publish(PARAMS, paths)  # deterministic: DVC sees the same output
    assert (out / "README.md").read_text() == card


def test_missing_metrics_or_model_is_one_clear_error(tmp_path):
    paths = fixture_repo(tmp_path)
    paths.metric("iterations").unlink()
    with pytest.raises(PublishError, match=r"iterations.json: no such file \(run `dvc repro`"):
        publish(PARAMS, paths)
    write_json(paths.metric("iterations"), [{"model": "iter9", "test_accuracy": 50.0}])
    with pytest.raises(PublishError, match=r"iter9: no model \(the last row of metrics/iterations.json names 'iter9'"):
        publish(PARAMS, paths)


class FakeHfApi:
    calls: list = []

    def __init__(self, token=None):
        FakeHfApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        FakeHfApi.calls.append(("upload_folder", kw))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi.calls


def test_push_uploads_models_final_with_the_env_token(tmp_path, fake_hub, monkeypatch):
    paths = fixture_repo(tmp_path)
    publish(PARAMS, paths)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    url = push(paths, "someone/tinythinker-csqa", private=True)
    assert url == "https://huggingface.co/someone/tinythinker-csqa/commit/abc"
    assert fake_hub == [
        ("init", "hf_test_token"),
        ("create_repo", "someone/tinythinker-csqa", {"repo_type": "model", "private": True, "exist_ok": True}),
        ("upload_folder", {"repo_id": "someone/tinythinker-csqa", "repo_type": "model",
                           "folder_path": str(paths.final_model),
                           "commit_message": "Upload TinyThinker model and card"})]


def test_push_refuses_without_token_or_card_and_reports_hub_errors(tmp_path, fake_hub, monkeypatch):
    from huggingface_hub.errors import OfflineModeIsEnabled

    paths = fixture_repo(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    with pytest.raises(PublishError, match="no model with a card to upload"):
        push(paths, "someone/x")  # publish has not run
    publish(PARAMS, paths)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match="HF_TOKEN environment variable.*nothing was uploaded"):
        push(paths, "someone/x")
    assert fake_hub == []
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    def offline(self, **kw):
        raise OfflineModeIsEnabled("Cannot reach the Hub: offline mode is enabled.")
    monkeypatch.setattr(FakeHfApi, "upload_folder", offline)
    with pytest.raises(PublishError, match="someone/x: upload failed: Cannot reach the Hub"):
        push(paths, "someone/x")


def test_cli_publish_and_push(tmp_path, fake_hub, monkeypatch):
    import dataclasses

    paths = fixture_repo(tmp_path)
    raw = dataclasses.asdict(PARAMS)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(raw))))
    runner = CliRunner()
    monkeypatch.delenv("HF_TOKEN", raising=False)
    res = runner.invoke(app, ["publish", "--push", "someone/x", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "no model with a card" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["publish", "--root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (paths.final_model / "README.md").read_text() == model_card(PARAMS, paths)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    res = runner.invoke(app, ["publish", "--push", "someone/x", "--root", str(tmp_path)])
    assert res.exit_code == 0 and res.stdout.strip() == "https://huggingface.co/someone/x/commit/abc"


def test_dvc_stage_and_artifacts():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stage = dvc["stages"]["publish"]
    assert stage["cmd"] == "tinythinker publish" and stage["outs"] == ["models/final"]
    assert stage["params"] == list(KEY_PARAMS)  # the card's params are tracked
    assert {"models/sft", "models/dpo", "metrics/iterations.json"} <= set(stage["deps"])
    arts = dvc["artifacts"]
    assert {a["path"]: a["type"] for a in arts.values()} == {"models/sft": "model", "models/final": "model"}
    assert all(a["desc"] and a["labels"] for a in arts.values())


# Every dataset x student family x teacher kind the card can describe (issue 33: "A embedded student that answers
# Embedded closed-world category questions questions", "1 epochs", the offline teacher named as gpt-4o).
CONFIGS = [
    ("synthetic", "embedded", "offline", {"model_type": "t5", "is_encoder_decoder": True}),
    ("synthetic", "embedded-causal", "offline", {"model_type": "llama"}),
    ("synthetic", "google-t5/t5-small", "offline", {"model_type": "t5", "is_encoder_decoder": True}),
    ("csqa", "google-t5/t5-small", "openai", {"model_type": "t5", "is_encoder_decoder": True}),
    ("csqa", "embedded", "openai", {"model_type": "t5", "is_encoder_decoder": True}),
    ("obqa", "Qwen/Qwen2.5-0.5B", "openai", {"model_type": "qwen2"}),
    ("obqa", "embedded-causal", "openai", {"model_type": "llama"}),
    ("strategyqa", "HuggingFaceTB/SmolLM2-360M", "openai", {"model_type": "llama"}),
    ("strategyqa", "google-t5/t5-small", "openai", {"model_type": "t5", "is_encoder_decoder": True}),
]


def _prose(body: str) -> str:
    """The card's sentences: without the code blocks (prompts, params) and the results table."""
    import re

    body = re.sub(r"```.*?```", "", body, flags=re.S)
    return "\n".join(line for line in body.splitlines() if not line.startswith("|"))


@pytest.mark.parametrize("dataset,student,backend,config", CONFIGS,
                         ids=[f"{d}-{s.rsplit('/', 1)[-1]}-{b}" for d, s, b, _ in CONFIGS])
@pytest.mark.parametrize("epochs,iterations", [(1.0, 1), (2.0, 3)])
def test_card_reads_as_english(tmp_path, dataset, student, backend, config, epochs, iterations):
    import re

    its = {"iter1": {"init": "models/sft"}, "iter2": {"init": "models/dpo/iter1"},
           "iter3": {"init": "models/dpo/iter2"}}
    p = PARAMS.replace(**{"dataset.name": dataset, "student.model": student, "teacher.backend": backend,
                          "student.revision": None, "sft.epochs": epochs,
                          "dpo.iterations": dict(list(its.items())[:iterations])})
    meta, body = split_card(model_card(p, fixture_repo(tmp_path, config=config)))
    text = _prose(body)
    words = re.findall(r"[A-Za-z][\w'-]*", text)
    doubled = [a for a, b in zip(words, words[1:]) if a.lower() == b.lower()]
    assert not doubled, f"doubled words {doubled}:\n{text}"
    # "a" before a vowel sound, "an" before a consonant: none of "A embedded", "a encoder", "an student"
    assert not re.search(r"\b[Aa] [aeiouAEIOU`]", text), text
    assert not re.search(r"\b[Aa]n [b-df-hj-np-tv-zB-DF-HJ-NP-TV-Z]", text), text
    # numbers agree with their nouns
    assert not re.search(r"(?<![\d.])1 (epochs|iterations|rationales|chains)\b", text), text
    assert not re.search(r"\b(?!1\b)\d+(\.\d+)? (epoch|iteration|rationale|chain)\b(?! step)", text), text
    assert "(s)" not in text
    assert ("1 epoch," if epochs == 1 else "2 epochs,") in text
    assert ("1 iteration of DPO" if iterations == 1 else "3 iterations of DPO") in text
    # the opening sentence names the student as what it is
    first = body.split("\n\n")[1]
    if student.startswith("embedded"):
        assert first.startswith("A small ") and "built and pretrained by the pipeline" in first
        assert ("decoder-only" in first) == (student == "embedded-causal")
    else:
        assert first.startswith(f"A student fine-tuned from `{student}` that answers")
    assert {"synthetic": "closed-world category questions", "csqa": "CommonsenseQA", "obqa": "OpenBookQA",
            "strategyqa": "StrategyQA yes/no questions"}[dataset] in first
    teacher = body.split("**Teacher:**", 1)[1].split("\n- ", 1)[0]
    if backend == "offline":
        assert "the project's offline teacher" in teacher and "no language model" in teacher
        assert "gpt" not in body.lower() and PARAMS.teacher.model not in body  # no OpenAI model id anywhere
    else:
        assert f"`{PARAMS.teacher.model}`" in teacher and "offline" not in teacher
