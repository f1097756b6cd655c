"""The encoder-decoder student family (T5): the prompt is the encoder's input, the target the decoder's labels.

One of two modules behind the same contract (`family.StudentFamily`; `causal.py` is the other; `family.family_of`
picks one from the model's config): the tokenizer around a trained vocabulary, the embedded model, how prompts are
padded and outputs cut for generation, and phase 1's trainer, arguments and data.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ..params import Params

KIND = "seq2seq"
ENCODE: dict = {}  # tokenizer kwargs for a generation batch: right padding (the tokenizer's default)
SENTINELS = 8  # <extra_id_0..7> of the embedded tokenizer: the span-corruption masks of pretraining
LORA = False  # adapters are for decoder-only students


def claims(config) -> bool:
    """An encoder-decoder config is this family's."""
    return bool(getattr(config, "is_encoder_decoder", False))


def wrap_vocab(vocab: list[tuple[str, float]]):
    """The T5 tokenizer of a trained Unigram vocabulary (appends </s> to every text, as T5 expects), with T5's
    sentinel tokens for span corruption (pretraining)."""
    from transformers import T5TokenizerFast

    # vocab=, not vocab_file= (transformers 5 silently builds a 4-token tokenizer from the latter)
    return T5TokenizerFast(vocab=vocab, extra_ids=SENTINELS)


def prepare_tokenizer(tokenizer):
    return tokenizer  # T5 tokenizers come with pad and </s>


def model_class():
    from transformers import AutoModelForSeq2SeqLM
    return AutoModelForSeq2SeqLM


def build_embedded(params: Params, tokenizer):
    """A small T5 from `student.embedded` (weights seeded by the caller); pad doubles as the decoder start."""
    from transformers import T5Config, T5ForConditionalGeneration

    e = params.student.embedded
    config = T5Config(vocab_size=len(tokenizer), d_model=e.d_model, d_ff=e.d_ff, d_kv=e.d_kv,
                      num_heads=e.num_heads, num_layers=e.num_layers, num_decoder_layers=e.num_decoder_layers,
                      dropout_rate=e.dropout_rate, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return T5ForConditionalGeneration(config)


def new_tokens(ids, enc):
    """The generated part of `model.generate`'s output: all of it (the decoder starts empty)."""
    return ids


# --- pretraining --------------------------------------------------------------------------------------------
def _compose(total: int, parts: int, rng) -> list[int]:
    """`total` split into `parts` positive integers at random."""
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0] + cuts, cuts + [total])]


def pretrain_collator(params: Params, tokenizer):
    """T5's span corruption: in each sentence (token ids, no </s>) about `noise_density` of the tokens, in spans of
    `mean_span_length` on average, become one sentinel each in the input; the target lists the spans, each after
    its sentinel. For a share `sentence_targets` of the sentences the target is instead the whole sentence (BART's
    denoising target), which also trains the decoder to copy what the encoder reads, as every step of the task
    does ("(B) zadrim" -> "B is zadrim"). The masks are drawn anew at every batch from a generator seeded by `seed`."""
    import random

    import torch

    p = params.student.pretrain
    sentinels = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(SENTINELS)])
    eos, pad, rng = tokenizer.eos_token_id, tokenizer.pad_token_id, random.Random(params.seed)

    def corrupt(ids: list[int]) -> tuple[list[int], list[int]]:
        n = len(ids)
        noise = max(1, min(n - 1, round(n * p.noise_density)))
        k = max(1, min(SENTINELS, noise, round(noise / p.mean_span_length), n - noise + 1))
        spans = _compose(noise, k, rng)
        keeps = _compose(n - noise + 2, k + 1, rng)  # the first and last kept runs may be empty
        keeps[0], keeps[-1] = keeps[0] - 1, keeps[-1] - 1
        src, tgt, i = [], [], 0
        for j in range(k):
            src += ids[i:i + keeps[j]] + [sentinels[j]]
            i += keeps[j]
            tgt += [sentinels[j]] + ids[i:i + spans[j]]
            i += spans[j]
        if rng.random() < p.sentence_targets:
            tgt = ids
        return src + ids[i:] + [eos], tgt + [eos]

    def collate(rows: list[dict]) -> dict:
        pairs = [corrupt(r["input_ids"]) if len(r["input_ids"]) > 1 else (r["input_ids"] + [eos],) * 2
                 for r in rows]
        width, depth = max(len(s) for s, _ in pairs), max(len(t) for _, t in pairs)
        return {"input_ids": torch.tensor([s + [pad] * (width - len(s)) for s, _ in pairs]),
                "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in pairs]),
                "labels": torch.tensor([t + [-100] * (depth - len(t)) for _, t in pairs])}
    return collate


def probe_prompt(prompt: str) -> str:
    """A probe (a fact's wording cut before its category) as span corruption asks it: the rest is one masked span."""
    return f"{prompt} <extra_id_0>."


# --- phase 1 -------------------------------------------------------------------------------------------------
def sft_arguments(params: Params, **common):
    from transformers import Seq2SeqTrainingArguments
    return Seq2SeqTrainingArguments(**common)


def sft_data(params: Params, stages: Mapping[str, Sequence[dict]],
             tokenizer) -> tuple[list[dict], dict[str, list[int]]]:
    """Stage rows tokenised and concatenated in chain order (inputs and targets each end with </s>), and the input
    lengths per stage (length grouping)."""
    s = params.sft
    rows, lengths = [], {}
    for stage, data in stages.items():
        src = tokenizer([r["input"] for r in data], truncation=True, max_length=s.max_source_length)
        tgt = tokenizer([r["target"] for r in data], truncation=True, max_length=s.max_target_length)
        rows += [{"input_ids": i, "attention_mask": m, "labels": t}
                 for i, m, t in zip(src["input_ids"], src["attention_mask"], tgt["input_ids"])]
        lengths[stage] = [len(i) for i in src["input_ids"]]
    return rows, lengths


def sft_trainer(params: Params, model, tokenizer, rows, valid, held_out=None):
    """Phase 1's library Trainer, Seq2SeqTrainer, and its arguments (training.sft_trainer adds the curriculum); its
    eval dataset the held-out stage rows (a dict by stage, prepared by `sft_data`) whose loss evaluation adds."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

    # T5's loss is the mean over its micro-batch's label tokens: it takes no num_items_in_batch (its forward only
    # swallows **kwargs), so the Trainer must divide it by the accumulation steps, or a step of k micro-batches
    # would log, and back-propagate, k times the loss.
    model.accepts_loss_kwargs = False
    return Seq2SeqTrainer, dict(
        model=model, train_dataset=rows, eval_dataset=held_out or valid, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))


def finish(trainer) -> None:
    """Nothing to fold in before the best model is saved (see causal.finish)."""
