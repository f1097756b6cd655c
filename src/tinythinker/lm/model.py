"""The student: its tokenizer trained on the corpus, loading/building the model, and which family it is.

The families (family.py: `seq2seq`, T5; `causal`, decoder-only) sit behind one contract; `family` reads which one
from the model's config (`family.family_of`), never from a flag; every stage asks it here. `student.model: embedded`
is a small T5 and `embedded-causal` a small Llama-shaped model, both built from config with a Unigram tokenizer
trained on the stage datasets (no download); anything else is a Hub id or local directory loaded with
`from_pretrained`.
"""
from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ..io import DataError, read_jsonl
from ..params import Params, ParamsError
from ..paths import Paths
from ..protocol import QUESTION_FIELDS, STAGE_FIELDS, TEXT_FIELDS
from .family import EMBEDDED, FAMILIES, StudentFamily, family_of

SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5: pad doubles as the decoder start token


def family(params: Params, model_dir: Optional[Path] = None, what: str = "model directory") -> StudentFamily:
    """The family of the student a stage trains or reads: the checkpoint in `model_dir` (`what` names where it came
    from in an error), else the initial student (`student.model`, its config read at `student.revision`)."""
    m = params.student.model
    if model_dir is None and m in EMBEDDED:
        kind = FAMILIES[EMBEDDED[m]]
    else:
        from transformers import AutoConfig
        config = (load_pretrained(AutoConfig, model_dir, what) if model_dir is not None else
                  load_pretrained(AutoConfig, m, "student.model", is_local(m), revision=params.student.revision))
        kind = family_of(config)
    if params.student.lora.rank and not kind.LORA:
        raise ParamsError(f"student.lora.rank: LoRA is for decoder-only students; {m} is encoder-decoder (set 0)")
    return kind


def corpus(paths: Paths) -> Iterator[str]:
    """Every text the student reads or writes: its pretraining text, stage inputs and targets, valid/test question
    blocks (so no word of the corpus is <unk>)."""
    files = sorted(paths.sft_data.glob("*/*.jsonl"))
    if not files:
        raise DataError(f"{paths.sft_data}: no stage datasets (run the build stage first)")
    _check_fresh(paths)
    for row in read_jsonl(paths.corpus / "text.jsonl", TEXT_FIELDS):
        yield row["text"]
    for f in files:
        for row in read_jsonl(f, STAGE_FIELDS):
            yield row["input"]
            yield row["target"]
    for split in ("valid", "test"):
        for row in read_jsonl(paths.sft_data / f"{split}.jsonl", QUESTION_FIELDS):
            yield row["block"]


def _check_fresh(paths: Paths) -> None:
    """The stage datasets must come from the training split as it is now: a split emptied or changed since the
    build (which then refused it) would otherwise train a tokenizer on the old data and exit 0."""
    split = paths.split("train")
    if not split.exists():
        return  # stage datasets made elsewhere (a test, a copied workspace): nothing to compare
    train = {row["id"] for row in read_jsonl(split, ["id"])}
    built = {row["qid"] for row in read_jsonl(paths.sft_data / "train_questions.jsonl", ["qid"])}
    if not train or not built <= train:
        raise DataError(f"{paths.sft_data}: built from another training split than {split} ({len(built)} questions "
                        f"with chains, {len(train)} in the split); rerun `dvc repro build`")


_LETTER_GLUE = re.compile(r"▁?[(\[]?[A-Z][)\],.:;?!]?")
_PUNCT = ")],.:;?!\"'"


def train_tokenizer(texts: Iterable[str], vocab_size: int, kind=None):
    """A T5-style Unigram tokenizer trained on `texts`, wrapped for the family `kind` (a module; default seq2seq: a
    transformers T5 tokenizer, which appends `</s>`; causal: the same vocabulary, `</s>` closing completions only).

    Trained with the pre-tokenizer T5Tokenizer rebuilds on every load (whitespace split + Metaspace, no
    normalizer; newlines become spaces as in T5's own vocabulary), and wrapped through the same `vocab=`
    constructor a reload uses, so the tokenizer trained here and the one saved behave identically.
    """
    import json
    import math
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    kind = kind or FAMILIES["seq2seq"]
    texts = list(texts)
    vocab_size -= kind.SENTINELS  # T5's sentinels count in the model's vocabulary
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    assert [p for p, _ in vocab[:3]] == SPECIALS
    # Make the result a function of the corpus alone (dvc repro gives the same file): the trainer gives
    # characters it did not keep as pieces a score of min + k x 1e-4 with k in hash-set order, and its sums
    # carry float noise. Give those characters the minimum score, round, and break ties by piece.
    lowest = min(s for _, s in vocab[3:])
    band = lowest + 1e-4 * (sum(len(p) == 1 for p, _ in vocab) + 1)
    # An option letter must be the same token in "(B) text" and in "For option B,": the analyze step copies
    # the text that follows the asked letter, and a tiny model from scratch cannot learn that "▁(B)" and
    # "▁B," mean the same letter in a few minutes. So no piece may glue a lone capital to ▁ or punctuation.
    lowest = round(lowest, 6)  # the minimum itself carries the noise too
    pieces = {p: lowest if s < band else round(s, 6) for p, s in vocab[3:] if not _LETTER_GLUE.fullmatch(p)}
    for ch in "▁()[],.:;?!" + string.ascii_uppercase:
        pieces.setdefault(ch, lowest)
    # The trainer seeds pieces from substrings shared by several distinct words, so on a small closed
    # vocabulary (the synthetic task has ~100 words) it ends far below vocab_size and spells frequent words
    # letter by letter. Add the frequent whole words, scored by their unigram log-frequency where that is higher.
    words = Counter()
    for word, n in Counter(w for t in texts for w in t.split()).items():  # pre-tokenize each distinct word once
        for w in (p.rstrip(_PUNCT) for p, _ in tok.pre_tokenizer.pre_tokenize_str(word)):
            if w[1:].isalpha() and not _LETTER_GLUE.fullmatch(w):
                words[w] += n
    total = sum(words.values())
    for w, n in sorted(words.items(), key=lambda x: (-x[1], x[0])):
        if len(pieces) + 3 >= vocab_size or n < 2:
            break
        pieces[w] = max(pieces.get(w, -math.inf), round(math.log(n / total), 6))
    rest = sorted(pieces.items(), key=lambda v: (-v[1], v[0]))
    # The characters added above can overshoot a tiny vocab_size: the least likely longer pieces make room (every
    # character stays, so nothing becomes <unk>).
    over = len(rest) + len(SPECIALS) - vocab_size
    if over > 0:
        drop = {p for p, _ in [v for v in rest if len(v[0]) > 1][-over:]}
        rest = [v for v in rest if v[0] not in drop]
    vocab = [(p, 0.0) for p in SPECIALS] + rest
    return kind.wrap_vocab(vocab)


# What a saved checkpoint directory must hold: a model config and a tokenizer (without one, transformers
# quietly builds an empty tokenizer from the config).
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def check_checkpoint(path: Path, what: str, model: bool = True, tokenizer: bool = True) -> None:
    """A DataError naming `path` and `what` it was meant to be unless it is a directory holding a tokenizer
    (and, with `model`, a model config; without `tokenizer`, the config alone), an OSError if it cannot be read;
    cheap, so callers run it before importing torch."""
    try:
        present = {p.name for p in path.iterdir() if p.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path}: no such model directory ({what})") from None
    except PermissionError as e:  # there, but unreadable: not "missing"
        raise OSError(e.errno, e.strerror, str(path)) from None
    needs = ([TOKENIZER_FILES] if tokenizer else []) + ([("config.json",)] if model else [])
    missing = [" or ".join(names) for names in needs if not present & set(names)]
    if missing:
        raise DataError(f"{path}: not a complete checkpoint ({what}): no {', no '.join(missing)}")
    if model and tokenizer:
        _check_weights(path / WEIGHTS, what)


WEIGHTS = "model.safetensors"  # what save_pretrained writes for a model of this size (one shard)


def _check_weights(weights: Path, what: str) -> None:
    """The weights file, if the checkpoint names one, must be a readable safetensors file: a dangling link (a DVC
    checkout whose cache is gone), a directory, an unreadable or truncated file is said as what it is, not as the
    "no such file" the loader reports."""
    if not weights.is_symlink() and not weights.exists():
        return  # sharded or another format: the loader decides
    if weights.is_symlink() and not weights.exists():
        raise DataError(f"{weights}: a link to {os.readlink(weights)}, which is missing ({what}); `dvc checkout` "
                        "or `dvc pull` restores it")
    if weights.is_dir():
        raise DataError(f"{weights}: a directory, not a weights file ({what})")
    try:
        with weights.open("rb") as f:
            head = f.read(8)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(weights)) from None
    header = int.from_bytes(head, "little") if len(head) == 8 else None
    if header is None or header + 8 > size:
        raise DataError(f"{weights}: not a complete safetensors file ({size} bytes; {what}): truncated or "
                        "overwritten; rerun the stage that wrote it")


def load_pretrained(cls, source: str | Path, what: str, local: bool = True, **kwargs):
    """`cls.from_pretrained(source, **kwargs)`; a directory that is not a complete checkpoint, a broken file in
    it or an unreachable Hub id (`local=False`) raises one DataError naming `source` and `what` it was meant to be."""
    if local:
        check_checkpoint(Path(source), what, model=cls.__name__ != "AutoTokenizer")
    try:
        return cls.from_pretrained(source, **kwargs)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways (OSError, ValueError, KeyError,
        # SafetensorError, tokenizers' Exception); all mean the same to the user: this checkpoint is broken
        detail = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"{source}: cannot load ({what}): {type(e).__name__}: {detail}") from None


def is_local(model: str) -> bool:
    """student.model names a directory (rather than a Hub id) when it exists or is spelled as a path."""
    return Path(model).exists() or Path(model).is_absolute() or model.startswith(".")


def load_student(params: Params, paths: Paths, model_dir: Optional[Path] = None, what: str = "model directory"):
    """(model, tokenizer): a saved checkpoint when `model_dir` is given (`what` names where it came from in
    an error), else the initial student: an embedded one as the pretrain stage left it, a Hub or local one as named."""
    if model_dir is None and params.student.model in EMBEDDED:
        model_dir, what = paths.pretrained_model, "the pretrain stage's output: dvc repro pretrain"
    if model_dir is not None:
        check_checkpoint(Path(model_dir), what)  # before seconds of imports
    from transformers import AutoTokenizer

    kind = family(params, model_dir, what)
    if model_dir is not None:
        tokenizer = load_pretrained(AutoTokenizer, model_dir, what)
        model = load_pretrained(kind.model_class(), model_dir, what)
    else:
        tokenizer = load_pretrained(AutoTokenizer, paths.tokenizer, "the tokenizer stage's output")
        model = load_pretrained(kind.model_class(), params.student.model, "student.model",
                            is_local(params.student.model), revision=params.student.revision)
    return _ready(params, kind, model, tokenizer)


def build_initial(params: Params, paths: Paths):
    """(model, tokenizer): the embedded student freshly initialised (seeded: the initial weights are part of the
    experiment) with the tokenizer stage's tokenizer; what the pretrain stage starts from."""
    import torch
    from transformers import AutoTokenizer

    kind = family(params)
    tokenizer = load_pretrained(AutoTokenizer, paths.tokenizer, "the tokenizer stage's output")
    torch.manual_seed(params.seed)
    return _ready(params, kind, kind.build_embedded(params, tokenizer), tokenizer)


def _ready(params: Params, kind, model, tokenizer):
    tokenizer = kind.prepare_tokenizer(tokenizer)
    # Generation reads model.generation_config only (transformers 5); pin it rather than inherit defaults.
    g = model.generation_config
    g.max_new_tokens = params.generation.max_new_tokens
    g.max_length = None
    g.eos_token_id = tokenizer.eos_token_id
    g.pad_token_id = tokenizer.pad_token_id
    g.decoder_start_token_id = getattr(model.config, "decoder_start_token_id", None)  # T5: pad; decoder-only: none
    return model, tokenizer
