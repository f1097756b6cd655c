"""The one typed, validated view of params.yaml.

Every knob of every stage lives in params.yaml; this module turns it into frozen dataclasses. Loading fails
with a `ParamsError` naming the offending key (``sft.learning_rate: expected float, got 'fast'``) for an
unknown key, a missing key, a wrong type or a value outside its range, so a typo in ``dvc exp run -S`` never
trains silently with a default. params.yaml is the only source of values: the dataclasses have no defaults
(tests build their Params from params.yaml too), and it is read with DVC's own YAML 1.2 reader, so the value
a stage runs with is the value `dvc params diff` shows.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from .io import read_yaml

DATASETS = ("synthetic", "csqa", "obqa", "strategyqa")
# Trainer precision: auto = bf16 on a GPU that has it, else fp32. fp16 is for GPUs without bf16; T5 is known
# to overflow in fp16, so prefer fp32 there.
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ParamsError(ValueError):
    """A params.yaml value that cannot be used; the message starts with the dotted key."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ParamsError(f"{key}: {msg}")


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric knob, [lo, hi] with either end open; checked on load, naming the key."""
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    cost: str = ""  # what the upper bound guards against, said with the error


    def __contains__(self, v: float) -> bool:
        return ((self.lo < v if self.lo_open else self.lo <= v)
                and (v < self.hi if self.hi_open else v <= self.hi))

    def violation(self, v: float) -> str:
        """The error for `v`, not in the range; over a bound with a cost: the bound and what it guards against."""
        if not self.cost:
            return f"must be {self}, got {v!r}"
        if v in Range(self.lo, lo_open=self.lo_open):
            return f"must be at most {self.hi:,}, got {v:,}: {self.cost}"
        return f"must be {Range(self.lo, lo_open=self.lo_open)}, got {v!r}"

    def __str__(self) -> str:
        num = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"  # noqa: E731
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        return f"in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


# Every int and float of the schema carries one of these (a test walks the schema to make sure).
Count = Annotated[int, Range(1)]  # sizes, steps, lengths: >= 1
Natural = Annotated[int, Range(0)]  # >= 0 (top_k 0 = off, num_shots 0 = zero-shot, max_retries 0)
Seed = Annotated[int, Range(0, 2**32 - 1)]  # numpy's seed range, which transformers.set_seed feeds
Positive = Annotated[float, Range(0, lo_open=True)]  # > 0
NonNegative = Annotated[float, Range(0)]  # >= 0
Share = Annotated[float, Range(0, 1, hi_open=True)]  # [0, 1)
TopP = Annotated[float, Range(0, 1, lo_open=True)]  # (0, 1]


def Size(most: int, cost: str) -> Any:
    """A count of things held or computed at once, bounded where it would exhaust memory (or time); `cost` says
    what a value over the bound would cost, in the error."""
    return Annotated[int, Range(1, most, cost=cost)]


MAX_EMBEDDED_WEIGHTS = 1_000_000_000
MAX_BATCH_TOKENS = 16_777_216

Questions = Size(1_000_000, "every question is generated and held in memory (about 1 KB each, with its "
                            "prompts and chains several times that)")
BatchSize = Size(65_536, "a batch's activations are held in memory at once")
SeqLength = Size(32_768, "tokens per sequence; a sequence's activations (its attention's grow with the square) "
                         "are held in memory")
Steps = Size(100_000_000, "optimizer steps, each a batch's forward and backward pass (and a log line kept)")
Width = Size(65_536, "a layer's weights grow with its width (and its square): more would not fit in memory")
Depth = Size(256, "layers, each holding its weights in memory")
Samples = Size(128, "completions per request (the OpenAI API allows at most 128)")
OutputTokens = Size(1_000_000, "output tokens per sample, reserved against the spend cap at the output price")
Rounds = Size(100, "each round asks again what earlier rounds left without a valid completion")
Concurrency = Size(10_000, "one open connection and task per request in flight")
Vocab = Size(1_000_000, "an embedding row per token, in memory")
Heads = Size(1_024, "attention heads of d_kv each, in every layer")
TestRuns = Size(1_000, "each run is a pass over the test set, every prediction kept")
Passes = Size(100_000, "each pass is one schedule of DPO steps over the pairs")

# A name that becomes a path (data/dpo/<key>, models/dpo/<key>, metrics/<name>): plain parts only, so it can
# neither climb out of the repository ('..') nor leave it (an absolute path).
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(name: str, key: str, nested: bool = False) -> str:
    """`name` if it is a relative name (with `nested`: parts joined by '/'), else a ParamsError naming `key`."""
    parts = name.split("/") if nested else [name]
    _check(all(_NAME_PART.fullmatch(p) for p in parts), key,
           f"{name!r} is not a plain {'relative ' if nested else ''}name (letters, digits, _ . -"
           f"{', parts joined by /' if nested else ''}; no '..', no absolute path): it becomes a path in the repository")
    return name


# The synthetic world's size, checked here and built to in data/synthetic.py: 8 hand-written categories, their
# things and clues extended by invented words up to these counts (a bigger world only adds words).
MAX_CATEGORIES, MAX_ENTITIES, MAX_CLUES = 8, 120, 40


@dataclass(frozen=True)
class SyntheticParams:
    """The embedded offline task (see tinythinker.data.synthetic)."""
    num_train: Questions
    num_valid: Questions
    num_test: Questions
    num_options: Annotated[int, Range(2, 5)]
    num_categories: Count
    entities_per_category: Count
    test_holdout: Share  # share of each category's things that answer only valid/test questions
    clues_per_category: Natural  # clues that imply the category (the recall's knowledge); 0: the question names it
    zipf: Annotated[float, Range(0, 4)]  # long tail of clue and thing frequencies (0: uniform)
    uniform_answers: bool  # answers drawn alike from their pool (every held-out fact tested equally), not by zipf

    def __post_init__(self):
        _check(self.num_categories >= self.num_options, "dataset.synthetic.num_categories",
               "must be >= num_options (every distractor comes from another category)")
        for key, most in (("num_categories", MAX_CATEGORIES), ("entities_per_category", MAX_ENTITIES),
                          ("clues_per_category", MAX_CLUES)):
            _check(getattr(self, key) <= most, f"dataset.synthetic.{key}", f"at most {most}")


@dataclass(frozen=True)
class DatasetParams:
    name: Literal["synthetic", "csqa", "obqa", "strategyqa"]
    # None: the official source of the task file (Hugging Face Hub); else a local file or directory.
    source: Optional[str]
    seed: Seed
    # Seeded cap on every split (train, valid, test) in prepare, for smoke runs on a real dataset; None = all.
    limit: Optional[Count]
    synthetic: SyntheticParams


@dataclass(frozen=True)
class PriceParams:
    """`teacher.price`: what the teacher costs, in USD per 1M tokens, when the price table (teacher/prompts.py)
    does not know the model or should not be used. The two optional keys default to no cached-input price and
    the Batch API's half price."""
    input: NonNegative
    output: NonNegative
    cached_input: Optional[NonNegative] = None  # prompt tokens read from the server's cache; None: the input price
    batch_discount: Annotated[float, Range(0, 1)] = 0.5  # share of the live price a Batch API answer costs


@dataclass(frozen=True)
class TeacherParams:
    backend: Literal["offline", "openai"]
    # live: one chat request at a time as rounds need them; batch: each round's requests through the Batch API
    # (half the price, answers within 24 h; see batch.py)
    mode: Literal["live", "batch"]
    batch_poll_seconds: Positive  # batch mode: seconds between two looks at a running batch
    # batch mode: where error-file lines and requests of an expired or cancelled batch go
    batch_fallback: Literal["next_round", "live"]
    model: str
    base_url: Optional[str]  # any OpenAI-compatible server; the key comes from $OPENAI_API_KEY only
    samples: Optional[Samples]  # completions per question; None = the task's default (8 CSQA, 4 OBQA/SQA)
    temperature: NonNegative
    max_tokens: OutputTokens
    # Reasoning models (o1, o3, gpt-5) refuse `max_tokens` and any non-default temperature with a 400.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"]
    send_temperature: bool
    rounds: Optional[Rounds]  # re-ask rounds for missing/invalid samples (spec 3.1); None = task default
    exemplars: Optional[str]  # few-shot file in the original *_cot.json format; None = shipped ones
    num_shots: Optional[Natural]  # None = all exemplars of the file
    requests_per_minute: Count
    tokens_per_minute: Count
    max_concurrency: Concurrency  # 0 would wait forever for a free slot
    timeout: Positive
    max_retries: Natural
    max_retry_seconds: Positive  # one request stops retrying after this long (plus one timeout)
    max_failures_in_a_row: Count  # requests ending unanswered in a row that stop the stage (see teacher/request.py)
    min_coverage: Annotated[float, Range(0, 1)]  # share of training questions that must end with a valid completion
    repeat_n: bool  # send n single-sample requests, for servers that ignore `n` (Ollama)
    offline_fault_rate: Share  # offline backend: share of deliberately faulty completions
    offline_wrong_fact_rate: Annotated[float, Range(0, 1)]  # offline backend: well-formed but with a wrong fact
    override_label: bool  # spec 9.4: the teacher's majority answer replaces the dataset label
    summarize_order: Literal["alphabetical", "teacher"]  # spec 9.6
    # Spend cap of the request stage in USD, for this request set across rounds and reruns; None: no cap.
    max_usd: Optional[Positive]
    price: Optional[PriceParams]  # None: the price table's, by model (needed for a cap on a model it lacks)

    def __post_init__(self):
        _check(self.mode == "live" or self.backend == "openai", "teacher.mode",
               f"batch needs teacher.backend=openai (the Batch API), not {self.backend!r}")


@dataclass(frozen=True)
class EmbeddedModelParams:
    """A small T5 (or, for embedded-causal, a Llama-shaped model of num_layers + num_decoder_layers layers) built
    from config (no download); its tokenizer is trained on the stage datasets."""
    vocab_size: Vocab
    d_model: Width
    d_ff: Width
    d_kv: Width
    num_heads: Heads
    num_layers: Depth
    num_decoder_layers: Depth
    dropout_rate: Share

    def __post_init__(self):
        layer = 4 * self.d_model * self.num_heads * self.d_kv + 3 * self.d_model * self.d_ff
        weights = self.vocab_size * self.d_model + (self.num_layers + self.num_decoder_layers) * layer
        _check(weights <= MAX_EMBEDDED_WEIGHTS, "student.embedded",
               f"about {weights:.3g} weights, more than {MAX_EMBEDDED_WEIGHTS:.0e} (4 GB in fp32, 16 GB to train "
               "with Adam): not a small student; use a Hub model for a large one")


@dataclass(frozen=True)
class LoraParams:
    """LoRA adapters (peft) on every linear layer of a decoder-only student; folded into the weights when saved."""
    # 0 = full fine-tuning
    rank: Annotated[int, Range(0, 65_536, cost="two matrices of d_model x rank per layer, in memory")]
    alpha: Positive
    dropout: Share


@dataclass(frozen=True)
class PretrainParams:
    """Stage `pretrain` of an embedded student on data/corpus: T5 span corruption, next-token prediction for a
    decoder-only one. A Hub or local student is pretrained already and skips it."""
    # 0 = the student sft starts from is the freshly initialised one (from scratch)
    steps: Annotated[int, Range(0, 100_000_000, cost="optimizer steps, each a forward and backward pass")]
    learning_rate: Positive
    batch_size: BatchSize
    warmup_ratio: Share
    noise_density: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)]  # T5: share of tokens masked
    mean_span_length: Annotated[float, Range(1)]  # T5: mean length of a masked span, in tokens
    sentence_targets: Annotated[float, Range(0, 1)]  # T5: share of sentences whose target is the whole sentence


@dataclass(frozen=True)
class StudentParams:
    # "embedded" (a T5 built from `embedded`), "embedded-causal" (a Llama-shaped decoder-only model built from
    # `embedded`), a Hub id such as google-t5/t5-small or Qwen/Qwen2.5-0.5B, or a local checkpoint dir; the family
    # (encoder-decoder or decoder-only) is read from the model's config.
    model: str
    # Hub revision (branch, tag or commit hash) for from_pretrained; None = the default branch.
    revision: Optional[str]
    embedded: EmbeddedModelParams
    pretrain: PretrainParams
    lora: LoraParams


@dataclass(frozen=True)
class GenerationParams:
    """Decoding of the recall -> analyze -> summarize chain (validation, DPO sampling, test)."""
    strategy: Literal["greedy", "sample"]
    temperature: Positive
    top_k: Natural  # 0 = no top-k cut
    top_p: TopP
    times: TestRuns  # test runs over the test set; > 1 with sampling adds a majority-vote accuracy
    batch_size: BatchSize
    max_new_tokens: SeqLength


@dataclass(frozen=True)
class SFTParams:
    stage_type: Literal["recall_analyze_summarize", "summarize", "recall_summarize", "analyze_summarize"]
    batch_size: BatchSize
    learning_rate: Positive
    epochs: Positive
    interval: Steps  # steps per recall / summarize block; analyze blocks are interval x options
    warmup_ratio: Share
    weight_decay: NonNegative
    max_grad_norm: NonNegative  # 0 = no clipping
    group_by_length: bool
    precision: Precision
    tf32: bool  # allow TF32 matmuls on an Ampere+ GPU (faster, not bit-fp32); the paper presets turn it off
    max_source_length: SeqLength
    max_target_length: SeqLength
    # Optimizer steps between validations/checkpoints; "cycle" = one curriculum cycle, I x (2 + options) for the
    # full chain (spec 5.1 table), recomputed from stage_type, interval and the dataset's options.
    eval_every: Union[Count, Literal["cycle"]]
    # Micro-batches of batch_size per optimizer step (effective batch = batch_size x this x processes); the
    # curriculum counts optimizer steps, so `interval` keeps its meaning.
    gradient_accumulation_steps: Count
    gradient_checkpointing: bool  # recompute activations in backward: less memory, ~30 % slower
    # Training questions whose teacher rows (every stage) sft holds out of training: their teacher-forced loss per
    # stage (eval/loss) and each step run alone on the teacher's input (eval/recall_f1, ...) at every validation.
    # 0: none held out, every teacher row trains (the paper's data).
    eval_questions: Natural

    def __post_init__(self):
        tokens = self.batch_size * (self.max_source_length + self.max_target_length)
        _check(tokens <= MAX_BATCH_TOKENS, "sft.batch_size",
               f"{self.batch_size} x (max_source_length + max_target_length) = {tokens:,} tokens in one micro-batch, "
               f"more than {MAX_BATCH_TOKENS:,} (their activations are held in memory at once); use "
               "gradient_accumulation_steps for a larger effective batch")


@dataclass(frozen=True)
class DPOIteration:
    init: str  # the iteration's starting model (also its reference): models/sft or a previous iteration


@dataclass(frozen=True)
class DPOParams:
    # The pair kinds trained (spec 6.1: recall, analyze, recall_analyze). Summarize pairs are this project's
    # addition, not the paper's (docs/embedded-task.md): the student's own sampled summaries of its own chains.
    stage_type: Literal["recall", "analyze", "recall_analyze", "summarize", "recall_analyze_summarize"]
    # sampled chains per training question (spec 6.2); pairs need several
    samples: Annotated[int, Range(2, 1_000, cost="sampled chains per question, held in memory")]
    max_questions: Optional[Count]  # seeded subset of training questions sampled per iteration; None = all
    temperature: Positive
    top_k: Natural
    top_p: TopP
    # TRL's vocabulary: sigmoid DPO + weighted SFT (NLL on chosen) = the original's rpo_alpha 0.5.
    loss_type: tuple[str, ...]
    loss_weights: tuple[NonNegative, ...]
    beta: Positive
    learning_rate: Positive
    batch_size: BatchSize
    passes: Passes  # max_steps = passes x (recall + analyze [+ summarize] schedule interval), spec 6.3
    warmup_ratio: Share
    max_grad_norm: NonNegative
    precision: Precision  # also the precision of the precomputed reference log-probs
    tf32: bool  # as sft.tf32; set before the reference log-probs are computed
    gradient_accumulation_steps: Count  # as sft: micro-batches of batch_size per optimizer step
    gradient_checkpointing: bool
    # The `control` stage: each iteration's start trained as many optimizer steps on its SFT data alone, then
    # tested (metrics/control/<iteration>.json), so phase 2 is read against more training; off, the stage writes
    # only that it was skipped.
    control: bool
    iterations: dict[str, DPOIteration]

    def __post_init__(self):
        _check(len(self.loss_type) >= 1, "dpo.loss_type", "needs at least one loss")
        _check(len(self.loss_type) == len(self.loss_weights), "dpo.loss_weights",
               "needs one weight per entry of dpo.loss_type")
        _check(sum(self.loss_weights) > 0, "dpo.loss_weights", "needs a weight > 0")
        for lt in self.loss_type:
            _check(lt in ("sigmoid", "sft"), "dpo.loss_type", f"unknown loss {lt!r} (sigmoid, sft)")
        for key in self.iterations:  # data/dpo/<key>, models/dpo/<key>, metrics/dpo/<key>.json
            check_name(key, f"dpo.iterations.{key}")


@dataclass(frozen=True)
class Params:
    seed: Seed
    # Prefix of the training stages' commands (dvc.yaml: `${launcher} tinythinker sft`): a command that runs a
    # Python module, e.g. `accelerate launch --num_processes 8 -m` for DDP on 8 GPUs.
    launcher: str
    # Trackers the training stages also log to (wandb, mlflow, tensorboard; each needs its package installed and
    # is configured by its own environment variables); dvclive curves under metrics/ are always written.
    report_to: tuple[Literal["wandb", "mlflow", "tensorboard"], ...]
    dataset: DatasetParams
    teacher: TeacherParams
    student: StudentParams
    sft: SFTParams
    generation: GenerationParams
    dpo: DPOParams

    def __post_init__(self):
        _check(self.launcher.split()[-1:] in (["-m"], ["--module"]), "launcher",
               f"must end with -m (the module tinythinker follows it), got {self.launcher!r}")
        length = self.sft.max_source_length + self.sft.max_target_length  # the DPO and chain inputs are cut so too
        for key, batch, per in (("generation.batch_size", self.generation.batch_size,
                                 self.sft.max_source_length + self.generation.max_new_tokens),
                                ("dpo.batch_size", self.dpo.batch_size, 2 * length),  # chosen and rejected
                                ("student.pretrain.batch_size", self.student.pretrain.batch_size, length)):
            _check(batch * per <= MAX_BATCH_TOKENS, key,
                   f"{batch:,} sequences of up to {per:,} tokens in one batch, more than {MAX_BATCH_TOKENS:,} tokens "
                   "(their activations are held in memory at once)")

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
    if origin is Annotated:
        value = _coerce(args[0], value, key)
        for rule in tp.__metadata__:
            _check(value in rule, key, rule.violation(value))
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
        _check(not isinstance(value, float) or math.isfinite(value), key, f"must be a finite number, got {value!r}")
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
    if typing.get_origin(tp) is Annotated:
        return f"{_describe(typing.get_args(tp)[0])} {' '.join(map(str, tp.__metadata__))}"
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    """`cls` from a mapping: unknown keys, then missing keys (in schema order), then each value checked."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    key = lambda k: f"{prefix}{'.' if prefix else ''}{k}"  # noqa: E731
    for k in raw:
        _check(k in names, key(k), f"unknown key (known: {', '.join(sorted(names))})")
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        _check(f.name in raw or not required, key(f.name), "missing key")
    return cls(**{k: _coerce(hints[k], v, key(k)) for k, v in raw.items()})


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
    _check(raw is None or isinstance(raw, dict), str(path), "top level must be a mapping")  # None: empty file
    try:
        return from_dict(raw)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
