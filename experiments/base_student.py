"""Can a base student be taught to read before it meets the default world? A negative result, kept to build on.

    python3 experiments/base_student.py --out experiments/results/base-student-<name>.json [--worlds 4 ...]

Issue 36 asks for a small checkpoint the project pretrains once on *other* synthetic worlds and ships, that already
reads (copies the thing after the asked letter, "(B) dobrol" -> "B is dobrol"), so the default run's SFT is not a
phase transition timed by the CPU's float sums. This script is that recipe, outside the pipeline: worlds of the
default's shape whose categories, things and clues are all invented from another salt (never a word the default
world can hold), a fixed vocabulary (every syllable of the generator, letters, template words; `--tokenizer named`
also one piece per word of these worlds and of the default world), and a mixture of facts (one masked span, or
the whole sentence back), lettered lists read back at one label, and the chain itself (recall / analyze /
summarize rows from the offline teacher). Every `--check-every` steps it measures greedy list reading on the worlds
(a trained one and one never trained on); at the end forced-choice list reading of the default world's things.

What it measured (experiments/results/base-student.json; two threads, this repository's 2-core machine): reading
never rose above chance in 4,000 steps (256,000 examples) under any mixture tried, while plain copying ("Restore:
<sentence>" -> the sentence) reached 75 % exact in 500 steps. Copying is learnable at this size; finding *which*
span to copy (the label, then what follows it) is the transition SFT goes through, and these mixtures did not
bring it forward. The default therefore still starts from the from-scratch student (docs/embedded-task.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import string
import sys
import time
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tinythinker.data.synthetic import (CLUES, CODAS, LABELS, LIST_READS, ONSETS, VOWELS, WORLD, Things,  # noqa: E402
                                        corpus, generate, invented, invented_clues, lists, offline_completion, world)
from tinythinker.lm.family import FAMILIES  # noqa: E402
from tinythinker.lm.model import SPECIALS  # noqa: E402
from tinythinker.params import MAX_CLUES, MAX_ENTITIES, EmbeddedModelParams, SyntheticParams  # noqa: E402
from tinythinker.protocol import completion, question_block  # noqa: E402
from tinythinker.teacher.build import stage_rows  # noqa: E402
from tinythinker.teacher.parse import analyses, parse_completion  # noqa: E402

from reading import list_reading  # noqa: E402 - experiments/reading.py: the same measure as for a pipeline run

CONSONANTS = "bcdfghjklmnpqrstvwxz"
LETTER_VOWELS = "aeiouy"
CATEGORY_CODAS = tuple(c for c in CODAS if c)  # a category is one closed syllable ("trax"), a thing two or more


@lru_cache(maxsize=1)
def default_words() -> frozenset[str]:
    """Every word the default world can use as a category, thing or clue word, at any size params allow."""
    words = set(WORLD) | {w for ws in WORLD.values() for w in ws}
    words |= {w for k in (c for cs in CLUES.values() for c in cs) for w in k.split()}
    words |= {w for ws in invented(MAX_ENTITIES).values() for w in ws}
    words |= {k.split()[-1] for ks in invented_clues(MAX_CLUES).values() for k in ks}
    return frozenset(words)


SYLLABIC = re.compile(f"(?:(?:{'|'.join(sorted(ONSETS, key=len, reverse=True))})[{''.join(VOWELS)}])+"
                      f"(?:{'|'.join(sorted(CODAS, key=len, reverse=True))})")


def _syllabic(rng: random.Random, syllables: int, codas: tuple[str, ...]) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(codas)


def _spelled(rng: random.Random) -> str:
    """4 to 7 letters, consonants and vowels alternating from a random start."""
    n, vowel = rng.randint(4, 7), rng.random() < 0.3
    out = []
    for _ in range(n):
        out.append(rng.choice(LETTER_VOWELS if vowel else CONSONANTS))
        vowel = not vowel
    return "".join(out)


def other_worlds(n: int, size: SyntheticParams, salt: str = "base") -> list[tuple[Things, Things]]:
    """`n` worlds of `size`'s categories, things and clues per category: (things, clues) each, no word shared with
    another world or with the default world; the same for the same arguments."""
    rng = random.Random(f"tinythinker-worlds-{salt}")
    taken = set(default_words())

    def fresh(draw) -> str:
        while True:
            w = draw()
            if w not in taken:
                taken.add(w)
                return w

    out = []
    for _ in range(n):
        names = [fresh(lambda: _syllabic(rng, 1, CATEGORY_CODAS)) for _ in range(size.num_categories)]
        things = {c: [fresh(lambda: _syllabic(rng, 2, CODAS)) if i % 2 else fresh(lambda: _spelled(rng))
                      for i in range(size.entities_per_category)] for c in names}
        # the default world's invented clues read "is dukish"; these also "can quojy"
        clues = {c: [f"is {fresh(lambda: _syllabic(rng, 2, ('sh',)))}" if i % 2
                     else f"can {fresh(lambda: _spelled(rng))}"
                     for i in range(size.clues_per_category)] for c in names}
        out.append((things, clues))
    return out


# Scores of the fixed vocabulary below: a named word is always one piece; a syllable beats two pieces of any other
# kind; a template word beats any spelling with a letter in it but not one in syllables (so no word the generator
# makes is cut differently for a template word it starts with); a letter is the last resort.
NAMED_SCORE, SYLLABLE_SCORE, WORD_SCORE, LETTER_SCORE = -0.5, -1.0, -3.5, -10.0
PUNCTUATION = "()[],.:;?!'\"-"


def syllable_tokenizer(texts: Iterable[str], named: Iterable[str] = (), min_count: int = 20, kind=None):
    """A fixed Unigram vocabulary for the embedded students' worlds, wrapped for the family `kind` (as
    `train_tokenizer`): one piece per word of `named` (every word a synthetic world of the default's generator can
    name), every syllable of the generator (onset + vowel, alone and word-initial, and its codas), every letter,
    digit and punctuation mark, and the template words of `texts` (seen `min_count` times or more).

    So every word a world of the generator names is one token, whatever world the tokenizer was built on, and any
    other word the generator makes (another salt's) is cut into its syllables ("dobrol": _do bro l); a trained
    vocabulary cuts a new world's words into pieces that depend on the words it happened to see. An option letter
    is never glued to _ or punctuation (as in `train_tokenizer`)."""
    from collections import Counter

    
    kind = kind or FAMILIES["seq2seq"]
    pieces = {ch: LETTER_SCORE for ch in ["▁", *string.ascii_letters, *string.digits, *PUNCTUATION]}
    pieces |= {f"▁{ch}": LETTER_SCORE for ch in string.ascii_lowercase + string.digits + "("}
    for syllable in [o + v for o in ONSETS for v in VOWELS]:
        pieces[syllable] = pieces[f"▁{syllable}"] = SYLLABLE_SCORE
    pieces |= {c: SYLLABLE_SCORE for c in (*CODAS, "sh") if c}
    counts = Counter(w.strip(PUNCTUATION) for t in texts for w in t.split())
    for w, n in sorted(counts.items()):
        if n >= min_count and w.isalpha() and len(w) > 1 and not SYLLABIC.fullmatch(w):
            pieces.setdefault(f"▁{w}", WORD_SCORE)
    pieces |= {f"▁{w}": NAMED_SCORE for w in named}
    vocab = [(p, 0.0) for p in SPECIALS] + sorted(pieces.items(), key=lambda v: (-v[1], v[0]))
    return kind.wrap_vocab(vocab)




MASK = "\0"  # where a masked span goes in a source text
WHOLE = "\1"  # a source that starts with it wants the whole sentence back (T5: no sentinel in the target)
RESTORE = "Restore:"  # what a T5 input asking for the whole sentence starts with


@dataclasses.dataclass(frozen=True)
class Recipe:
    worlds: int = 4
    questions_per_world: int = 1200
    steps: int = 4000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_ratio: float = 0.05
    seed: int = 1
    kinds: tuple[str, ...] = ("facts", "lists", "chain")  # "copy": every sentence of facts and lists back, unmasked
    tokenizer: str = "named"  # named: a piece per world word | syllables: the generator's syllables and letters
    family: str = "seq2seq"
    check_every: int = 500
    size: SyntheticParams = SyntheticParams(num_train=400, num_valid=0, num_test=0, num_options=4, num_categories=6,
                                            entities_per_category=30, test_holdout=0.0, clues_per_category=12,
                                            zipf=1.0, uniform_answers=True)
    model: EmbeddedModelParams = EmbeddedModelParams(vocab_size=0, d_model=128, d_ff=512, d_kv=16, num_heads=8,
                                                     num_layers=2, num_decoder_layers=2, dropout_rate=0.0)


def _masked(sentence: str, rng: random.Random) -> tuple[str, str]:
    """(the sentence with one span of 1-3 words replaced by MASK, the span); for half the sentences the target is
    the whole sentence instead (BART's denoising target): copying in order, the easiest reading there is, which the
    harder reading (the thing at a label) builds on."""
    words = sentence.split()
    n = min(len(words), rng.randint(1, 3))
    at = rng.randrange(len(words) - n + 1)
    masked = " ".join(words[:at] + [MASK] + words[at + n:])
    return (WHOLE + masked, sentence) if rng.random() < 0.5 else (masked, " ".join(words[at:at + n]))


def _read_back(read: str, thing: str) -> tuple[str, str]:
    """A list read back with everything from the thing on masked: "..., item B is the" -> "dobrol."."""
    head, tail = read.split("{e}", 1)
    return head + MASK, thing + tail


def _chain_rows(things: Things, clues: Things, recipe: Recipe, seed: int) -> list[tuple[str, str]]:
    """(input, target) rows of the three stages, from the offline teacher's chains on this world's questions."""
    rng, chains = random.Random(seed), []
    size = dataclasses.replace(recipe.size, num_train=recipe.questions_per_world)
    for q in generate(size, seed, things, clues)["train"]:
        cand, _ = parse_completion(offline_completion(q, rng)[0], len(q["choices"]))
        chains.append({"qid": q["id"], "block": question_block(q["question"], q["choices"]), "gt": q["answer"],
                       "recall": cand["general_knowledge"], "analyses": analyses(cand),
                       "order": [p[0] for p in cand["prefixes"]]})
    rows = stage_rows(chains)["recall_analyze_summarize"]
    return [(r["input"], r["target"]) for stage in rows.values() for r in stage]


def mixture(recipe: Recipe) -> dict[str, list[tuple[str, str]]]:
    """The training examples by kind, (source, target): a source holding MASK is a sentence whose span `target`
    was cut out (facts, lists); any other is a prompt and its completion (the chain)."""
    rng = random.Random(f"tinythinker-base-{recipe.seed}")
    out: dict[str, list[tuple[str, str]]] = {"facts": [], "lists": [], "chain": [], "copy": []}
    for i, (things, clues) in enumerate(other_worlds(recipe.worlds, recipe.size)):
        text, _ = corpus(recipe.size, recipe.seed + i, things, clues)
        facts = text[: len(text) // 2]  # the corpus is the facts, then as many list reads
        out["facts"] += [_masked(t, rng) for t in facts]
        out["lists"] += [_read_back(r, e) for r, e in lists(things, recipe.seed + i, len(facts))]
        if "chain" in recipe.kinds:
            out["chain"] += _chain_rows(things, clues, recipe, recipe.seed + i)
    if "copy" in recipe.kinds:
        out["copy"] = [(WHOLE + t, t) for t in texts({k: out[k] for k in ("facts", "lists")})]
    return {k: v for k, v in out.items() if k in recipe.kinds}


def _text(source: str, target: str) -> str:
    if source.startswith(WHOLE):
        return target
    if MASK in source:
        head, tail = source.split(MASK)
        return f"{head}{target}{tail}" if not head or head.endswith(" ") else f"{head} {target}{tail}"
    return source + completion(target)


def texts(examples: dict[str, list[tuple[str, str]]]) -> list[str]:
    """Every example as one text (the span back in place, or prompt + completion): what the tokenizer counts words
    in and the decoder-only student reads."""
    return [_text(s, t) for rows in examples.values() for s, t in rows]


def _t5_pair(source: str, target: str) -> tuple[str, str]:
    if source.startswith(WHOLE):
        return f"{RESTORE} {source[1:].replace(MASK, '<extra_id_0>')}", target
    if MASK in source:
        return source.replace(MASK, "<extra_id_0>"), f"<extra_id_0> {target}"
    return source, target


def _seq2seq_rows(examples, tokenizer) -> list[dict]:
    pairs = [_t5_pair(s, t) for rows in examples.values() for s, t in rows]
    enc = tokenizer([s for s, _ in pairs])["input_ids"]
    dec = tokenizer([t for _, t in pairs])["input_ids"]
    return [{"input_ids": x, "labels": y} for x, y in zip(enc, dec)]


def run(recipe: Recipe) -> dict:
    """Train a student on the recipe's mixture; its reading by step and at the end, and what it writes on the chain."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    kind, started = FAMILIES[recipe.family], time.time()
    examples = mixture(recipe)
    named = sorted(default_words() | _world_words(recipe)) if recipe.tokenizer == "named" else []
    everything = mixture(dataclasses.replace(recipe, kinds=("facts", "lists", "chain"), questions_per_world=40))
    tokenizer = kind.prepare_tokenizer(syllable_tokenizer(texts(everything), named, kind=kind))
    torch.manual_seed(recipe.seed)
    model = kind.build_embedded(_shape(recipe), tokenizer)
    if kind.KIND == "seq2seq":
        rows, collator = _seq2seq_rows(examples, tokenizer), DataCollatorForSeq2Seq(tokenizer, model=model)
    else:
        rows = [{"input_ids": i} for i in tokenizer(texts(examples), add_special_tokens=False)["input_ids"]]
        collator = kind.pretrain_collator(None, tokenizer)
    args = TrainingArguments(output_dir="/tmp/base-student-run", max_steps=recipe.steps, seed=recipe.seed,
                             per_device_train_batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                             warmup_steps=round(recipe.warmup_ratio * recipe.steps), lr_scheduler_type="linear",
                             logging_steps=max(1, recipe.steps // 40), save_strategy="no", report_to=[],
                             train_sampling_strategy="group_by_length", disable_tqdm=True,
                             use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    model.generation_config.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    unseen, seen = _unseen_lists(recipe), _unseen_lists(recipe, world=0)
    progress = _progress(recipe.steps, lambda: {"unseen_world": _reading_now(model, tokenizer, kind, unseen),
                                                "trained_world": _reading_now(model, tokenizer, kind, seen)},
                         recipe.check_every)
    trainer.add_callback(progress)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    things = [e for es in world(recipe.size).values() for e in es]
    return {"recipe": _plain(recipe), "examples": {k: len(v) for k, v in examples.items()},
            "vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters()),
            "first_loss": losses[0], "last_loss": losses[-1],
            "greedy_list_reading_by_step": progress.checks,
            "forced_choice_reading_default_world": list_reading(model, tokenizer, things, 100, recipe.seed),
            "threads": torch.get_num_threads(), "wall_seconds": round(time.time() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Recipe):
        if f.name not in ("size", "model"):
            kind = (lambda v: tuple(v.split(","))) if f.name == "kinds" else type(f.default)
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    ap.add_argument("--out", default=None)
    a = vars(ap.parse_args())
    out = a.pop("out")
    result = run(Recipe(**a))
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def _world_words(recipe: Recipe) -> set[str]:
    """The categories, things and clue words of the recipe's worlds and of the one after them (which reading is
    checked on: its words are pieces never trained, as the default world's are to the base student)."""
    out = set()
    for things, clues in other_worlds(recipe.worlds + 1, recipe.size):
        out |= set(things) | {e for es in things.values() for e in es}
        out |= {k.split()[-1] for ks in clues.values() for k in ks}
    return out


def _shape(recipe: Recipe):
    """What `build_embedded` reads of the params: the model's sizes and the longest sequence."""
    return SimpleNamespace(student=SimpleNamespace(embedded=recipe.model),
                           sft=SimpleNamespace(max_source_length=512, max_target_length=200))


def _plain(recipe: Recipe) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(recipe)))


def _progress(total: int, check, every: int = 500):
    """A line every 5 % of the steps (step, loss, seconds so far) and, every `every` steps, `check()` (reading)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self):
            self.start, self.checks = time.time(), {}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                print(f"base: step {state.global_step}/{total} loss {logs['loss']:.4f} "
                      f"({time.time() - self.start:.0f} s)", flush=True)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 or state.global_step == total:
                self.checks[state.global_step] = check()
                print(f"base: step {state.global_step} reads (%) {self.checks[state.global_step]}", flush=True)
    return Progress()


def _reading_now(model, tokenizer, kind, rows: list[tuple[str, str]]) -> float:
    """Greedy list reading (%): the read-back completed with the right thing, on lists of a world not trained on."""
    from tinythinker.lm.chain import Decoding, generate

    prompts = [_t5_pair(s, t)[0] if kind.KIND == "seq2seq" else s.split(MASK)[0].rstrip() for s, t in rows]
    outs = generate(model, tokenizer, prompts, Decoding(max_new_tokens=16), 64)
    model.train()
    return round(100.0 * sum(o.startswith(t) for o, (_, t) in zip(outs, rows)) / len(rows), 1)


def _unseen_lists(recipe: Recipe, n: int = 64, world: int = -1) -> list[tuple[str, str]]:
    """`n` read-backs of 4-item lists in a world after the recipe's (never trained on; `world`: another one)."""
    things, _ = other_worlds(recipe.worlds + 1, recipe.size)[world]
    rng, pool, out = random.Random(recipe.seed), [e for es in things.values() for e in es], []
    for _ in range(n):
        picks, at = rng.sample(pool, 4), rng.randrange(4)
        items = " ".join(f"({LABELS[i]}) {e}" for i, e in enumerate(picks))
        out.append(_read_back(LIST_READS[0].format(items=items, l=LABELS[at], e="{e}"), picks[at]))
    return out


if __name__ == "__main__":
    main()
