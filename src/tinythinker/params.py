"""The one typed, validated view of params.yaml.

Every knob of every stage lives in params.yaml; this module turns it into frozen dataclasses. Loading fails
with a `ParamsError` naming the offending key (``sft.learning_rate: expected float, got 'fast'``) for an
unknown key, a wrong type or a value outside its allowed set, so a typo in ``dvc exp run -S`` never trains
silently with a default.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .io import read_yaml


DATASETS = ("synthetic", "csqa", "obqa", "strategyqa")
STAGE_TYPES = ("recall_analyze_summarize", "summarize", "recall_summarize", "analyze_summarize")
DPO_STAGE_TYPES = ("recall", "analyze", "recall_analyze")
# Trainer precision: auto = bf16 on a GPU that has it, else fp32. fp16 is for GPUs without bf16; T5 is known
# to overflow in fp16, so prefer fp32 there.
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ParamsError(ValueError):
    """A params.yaml value that cannot be used; the message starts with the dotted key."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ParamsError(f"{key}: {msg}")


@dataclass(frozen=True)
class SyntheticParams:
    """The embedded offline task (see tinythinker.synthetic)."""
    num_train: int = 1200
    num_valid: int = 150
    num_test: int = 300
    num_options: int = 4
    num_categories: int = 6
    entities_per_category: int = 10
    test_holdout: float = 0.3  # share of each category's things that answer only valid/test questions
    clues_per_category: int = 6  # question wordings that imply the category (the recall's knowledge)
    zipf: float = 1.0  # long tail of clue and thing frequencies (0: uniform)

    def __post_init__(self):
        _check(2 <= self.num_options <= 5, "dataset.synthetic.num_options", "must be within 2..5")
        _check(self.num_categories >= self.num_options, "dataset.synthetic.num_categories",
               "must be >= num_options (every distractor comes from another category)")
        _check(0.0 <= self.test_holdout < 1.0, "dataset.synthetic.test_holdout", "must be in [0, 1)")
        _check(self.clues_per_category >= 1, "dataset.synthetic.clues_per_category", "must be >= 1")
        _check(0.0 <= self.zipf <= 4.0, "dataset.synthetic.zipf", "must be within 0..4")


@dataclass(frozen=True)
class DatasetParams:
    name: Literal["synthetic", "csqa", "obqa", "strategyqa"] = "synthetic"
    # None: the official source of the task file (Hugging Face Hub); else a local file or directory.
    source: Optional[str] = None
    seed: int = 42
    # Seeded cap on every split (train, valid, test) in prepare, for smoke runs on a real dataset; None = all.
    limit: Optional[int] = None
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)

    def __post_init__(self):
        _check(self.limit is None or self.limit >= 1, "dataset.limit", "must be >= 1 (or null for all)")


@dataclass(frozen=True)
class TeacherParams:
    backend: Literal["offline", "openai"] = "offline"
    model: str = "gpt-4o-2024-05-13"
    base_url: Optional[str] = None  # any OpenAI-compatible server; the key comes from $OPENAI_API_KEY only
    samples: Optional[int] = None  # completions per question; None = the task's default (8 CSQA, 4 OBQA/SQA)
    temperature: float = 0.8
    max_tokens: int = 256
    # Reasoning models (o1, o3, gpt-5) refuse `max_tokens` and any non-default temperature with a 400.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    send_temperature: bool = True
    rounds: Optional[int] = None  # re-ask rounds for missing/invalid samples (spec 3.1); None = task default
    exemplars: Optional[str] = None  # few-shot file in the original *_cot.json format; None = shipped ones
    num_shots: Optional[int] = None  # None = all exemplars of the file
    requests_per_minute: int = 4500
    tokens_per_minute: int = 550_000
    max_concurrency: int = 64
    timeout: float = 120.0
    max_retries: int = 6
    max_retry_seconds: float = 300.0  # one request stops retrying after this long (plus one timeout)
    max_failures_in_a_row: int = 20  # requests ending unanswered in a row that stop the stage (see teacher.py)
    min_coverage: float = 0.9  # share of training questions that must end with a valid completion
    repeat_n: bool = False  # send n single-sample requests, for servers that ignore `n` (Ollama)
    offline_fault_rate: float = 0.1  # offline backend: share of deliberately faulty completions
    offline_wrong_fact_rate: float = 0.15  # offline backend: share of well-formed completions with a wrong fact
    override_label: bool = True  # spec 9.4: the teacher's majority answer replaces the dataset label
    summarize_order: Literal["alphabetical", "teacher"] = "alphabetical"  # spec 9.6

    def __post_init__(self):
        _check(self.samples is None or self.samples >= 1, "teacher.samples", "must be >= 1")
        _check(self.max_tokens >= 1, "teacher.max_tokens", "must be >= 1")
        _check(self.rounds is None or self.rounds >= 1, "teacher.rounds", "must be >= 1")
        _check(0.0 <= self.offline_fault_rate < 1.0, "teacher.offline_fault_rate", "must be in [0, 1)")
        _check(0.0 <= self.offline_wrong_fact_rate <= 1.0, "teacher.offline_wrong_fact_rate", "must be in [0, 1]")
        _check(self.requests_per_minute > 0 and self.tokens_per_minute > 0, "teacher.requests_per_minute",
               "rate limits must be > 0")
        _check(0 < self.max_retry_seconds < float("inf"), "teacher.max_retry_seconds", "must be a finite number > 0")
        _check(self.max_failures_in_a_row >= 1, "teacher.max_failures_in_a_row", "must be >= 1")
        _check(0.0 <= self.min_coverage <= 1.0, "teacher.min_coverage", "must be in [0, 1]")


@dataclass(frozen=True)
class EmbeddedModelParams:
    """A small T5 built from config (no download); its tokenizer is trained on the stage datasets."""
    vocab_size: int = 2000
    d_model: int = 128
    d_ff: int = 512
    d_kv: int = 32
    num_heads: int = 4
    num_layers: int = 2
    num_decoder_layers: int = 2
    dropout_rate: float = 0.1


@dataclass(frozen=True)
class StudentParams:
    # "embedded" (built from `embedded`), a Hub id such as google-t5/t5-small, or a local checkpoint dir.
    model: str = "embedded"
    # Hub revision (branch, tag or commit hash) for from_pretrained; None = the default branch.
    revision: Optional[str] = None
    embedded: EmbeddedModelParams = field(default_factory=EmbeddedModelParams)


@dataclass(frozen=True)
class GenerationParams:
    """Decoding of the recall -> analyze -> summarize chain (validation, DPO sampling, test)."""
    strategy: Literal["greedy", "sample"] = "greedy"
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    times: int = 1  # test runs over the test set; > 1 with sampling adds a majority-vote accuracy
    batch_size: int = 256
    max_new_tokens: int = 200

    def __post_init__(self):
        _check(self.times >= 1, "generation.times", "must be >= 1")
        _check(self.temperature > 0, "generation.temperature", "must be > 0")
        _check(self.batch_size >= 1, "generation.batch_size", "must be >= 1")


@dataclass(frozen=True)
class SFTParams:
    stage_type: Literal["recall_analyze_summarize", "summarize", "recall_summarize",
                        "analyze_summarize"] = "recall_analyze_summarize"
    batch_size: int = 64
    learning_rate: float = 5e-4
    epochs: float = 10.0
    interval: int = 100  # steps per recall / summarize block; analyze blocks are interval x options
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    group_by_length: bool = True
    precision: Precision = "auto"
    tf32: bool = True  # allow TF32 matmuls on an Ampere+ GPU (faster, not bit-fp32); the paper presets turn it off
    max_source_length: int = 512
    max_target_length: int = 200
    # Optimizer steps between validations/checkpoints; "cycle" = one curriculum cycle, I x (2 + options) for the
    # full chain (spec 5.1 table), recomputed from stage_type, interval and the dataset's options.
    eval_every: Union[int, Literal["cycle"]] = "cycle"
    # Micro-batches of batch_size per optimizer step (effective batch = batch_size x this x processes); the
    # curriculum counts optimizer steps, so `interval` keeps its meaning.
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % slower

    def __post_init__(self):
        _check(self.batch_size >= 1, "sft.batch_size", "must be >= 1")
        _check(self.learning_rate > 0, "sft.learning_rate", "must be > 0")
        _check(self.epochs > 0, "sft.epochs", "must be > 0")
        _check(self.interval >= 1, "sft.interval", "must be >= 1")
        _check(0.0 <= self.warmup_ratio < 1.0, "sft.warmup_ratio", "must be in [0, 1)")
        _check(self.eval_every == "cycle" or self.eval_every >= 1, "sft.eval_every", "must be >= 1 or cycle")
        _check(self.gradient_accumulation_steps >= 1, "sft.gradient_accumulation_steps", "must be >= 1")


@dataclass(frozen=True)
class DPOIteration:
    init: str  # the iteration's starting model (also its reference): models/sft or a previous iteration


@dataclass(frozen=True)
class DPOParams:
    stage_type: Literal["recall", "analyze", "recall_analyze"] = "recall_analyze"
    samples: int = 10  # sampled chains per training question (spec 6.2 generation_times)
    max_questions: Optional[int] = None  # seeded subset of training questions sampled per iteration; None = all
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    # TRL's vocabulary: sigmoid DPO + weighted SFT (NLL on chosen) = the original's rpo_alpha 0.5.
    loss_type: tuple[str, ...] = ("sigmoid", "sft")
    loss_weights: tuple[float, ...] = (1.0, 0.5)
    beta: float = 0.5
    learning_rate: float = 5e-6
    batch_size: int = 32
    passes: int = 10  # max_steps = passes x (recall + analyze schedule interval), spec 6.3
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: Precision = "auto"  # also the precision of the precomputed reference log-probs
    tf32: bool = True  # as sft.tf32; set before the reference log-probs are computed
    gradient_accumulation_steps: int = 1  # as sft: micro-batches of batch_size per optimizer step
    gradient_checkpointing: bool = False
    iterations: dict[str, DPOIteration] = field(default_factory=dict)

    def __post_init__(self):
        _check(len(self.loss_type) == len(self.loss_weights), "dpo.loss_weights",
               "needs one weight per entry of dpo.loss_type")
        for lt in self.loss_type:
            _check(lt in ("sigmoid", "sft"), "dpo.loss_type", f"unknown loss {lt!r} (sigmoid, sft)")
        _check(self.beta > 0, "dpo.beta", "must be > 0")
        _check(self.samples >= 2, "dpo.samples", "must be >= 2 (pairs need several chains)")
        _check(self.max_questions is None or self.max_questions >= 1, "dpo.max_questions", "must be >= 1")
        _check(self.gradient_accumulation_steps >= 1, "dpo.gradient_accumulation_steps", "must be >= 1")


@dataclass(frozen=True)
class Params:
    seed: int = 42
    # Prefix of the training stages' commands (dvc.yaml: `${launcher} tinythinker sft`): a command that runs a
    # Python module, e.g. `accelerate launch --num_processes 8 -m` for DDP on 8 GPUs.
    launcher: str = "python3 -m"
    # Trackers the training stages also log to (wandb, mlflow, tensorboard; each needs its package installed and
    # is configured by its own environment variables); dvclive curves under metrics/ are always written.
    report_to: tuple[Literal["wandb", "mlflow", "tensorboard"], ...] = ()
    dataset: DatasetParams = field(default_factory=DatasetParams)
    teacher: TeacherParams = field(default_factory=TeacherParams)
    student: StudentParams = field(default_factory=StudentParams)
    sft: SFTParams = field(default_factory=SFTParams)
    generation: GenerationParams = field(default_factory=GenerationParams)
    dpo: DPOParams = field(default_factory=DPOParams)

    def __post_init__(self):
        _check(self.launcher.split()[-1:] in (["-m"], ["--module"]), "launcher",
               f"must end with -m (the module tinythinker follows it), got {self.launcher!r}")

    def replace(self, **overrides: Any) -> "Params":
        """Copy with dotted-key overrides: ``p.replace(**{"sft.epochs": 1})``; validated like a load."""
        raw = to_dict(self)
        for dotted, value in overrides.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return from_dict(raw)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, key)
        for alternative in inner:  # e.g. int or "cycle": the first that accepts the value
            try:
                return _coerce(alternative, value, key)
            except ParamsError:
                pass
        raise ParamsError(f"{key}: expected {' or '.join(map(_describe, inner))}, got {value!r}")
    if origin is Literal:
        _check(value in args, key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is dict:
        _check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), key, f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported schema type {tp}")  # a bug in this module, not in params.yaml


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        _check(k in names, f"{prefix}{'.' if prefix else ''}{k}",
               f"unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{'.' if prefix else ''}{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ParamsError(f"{prefix or 'params'}: {e}") from None


def from_dict(raw: dict | None) -> Params:
    return _build(Params, raw or {})


def to_dict(p: Any) -> Any:
    if dataclasses.is_dataclass(p):
        return {f.name: to_dict(getattr(p, f.name)) for f in dataclasses.fields(p)}
    if isinstance(p, dict):
        return {k: to_dict(v) for k, v in p.items()}
    if isinstance(p, tuple):
        return [to_dict(v) for v in p]
    return p


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    raw = read_yaml(path, ParamsError, "params file")
    _check(raw is None or isinstance(raw, dict), str(path), "top level must be a mapping")
    try:
        return from_dict(raw)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
