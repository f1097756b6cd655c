"""The encoder-decoder student family (T5): the prompt is the encoder's input, the target the decoder's labels.

One of two modules behind the same calls (`causal.py` is the other; `model.family` picks one from the model's
config): the tokenizer around a trained vocabulary, the embedded model, how prompts are padded and outputs cut for
generation, and phase 1's trainer, arguments and data.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ..params import Params

KIND = "seq2seq"
ENCODE: dict = {}  # tokenizer kwargs for a generation batch: right padding (the tokenizer's default)


def wrap_vocab(vocab: list[tuple[str, float]]):
    """The T5 tokenizer of a trained Unigram vocabulary (appends </s> to every text, as T5 expects)."""
    from transformers import T5TokenizerFast

    # vocab=, not vocab_file= (transformers 5 silently builds a 4-token tokenizer from the latter)
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


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


def sft_trainer(params: Params, model, tokenizer, rows, valid):
    """Phase 1's library Trainer, Seq2SeqTrainer, and its arguments (training.sft_trainer adds the curriculum)."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

    return Seq2SeqTrainer, dict(
        model=model, train_dataset=rows, eval_dataset=valid, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))


def finish(trainer) -> None:
    """Nothing to fold in before the best model is saved (see causal.finish)."""
