"""The decoder-only student family (Llama, Qwen2, SmolLM2, ...): each stage is one sequence, prompt -> completion.

The same protocol strings as for T5: the prompt is the stage input, the completion `protocol.completion(target)`,
closed by the tokenizer's EOS; the loss falls on the completion tokens only. Phase 1 runs on TRL's SFTTrainer
(prompt-completion data: it appends the EOS, tokenises prompt and prompt + completion, and masks the prompt), with
the project's curriculum batch sampler and chain validation, as the T5 path runs on Seq2SeqTrainer. Generation pads
prompts on the left, so every prompt of a batch ends where the new tokens begin, and keeps the new tokens only.
`student.lora.rank` > 0 trains LoRA adapters (peft) and folds them into the weights before a model is saved, so
every checkpoint the pipeline hands on is a plain model.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from .. import protocol as P
from ..io import DataError
from ..params import Params, ParamsError

KIND = "causal"
ENCODE = {"padding_side": "left"}  # tokenizer kwargs for a generation batch
SENTINELS = 0  # pretraining predicts the next token: no mask tokens
LORA = True  # student.lora.rank > 0 trains peft adapters


def claims(config) -> bool:
    """Every config that is not encoder-decoder is this family's."""
    return not getattr(config, "is_encoder_decoder", False)


def wrap_vocab(vocab: list[tuple[str, float]]):
    """The embedded tokenizer for a decoder-only student: the trained Unigram vocabulary with T5's pre-tokenizer and
    decoder, but no post-processor. A T5 tokenizer appends </s> to every text, which would put an EOS at the end of
    every prompt; here </s> is the EOS that closes a completion (TRL appends it as text, a special token that the
    tokenizer matches), and <pad> pads. Whitespace splitting makes tokenize(prompt) + tokenize(" " + target) =
    tokenize(prompt + " " + target), so the prompt mask is exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return TokenizersBackend(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def prepare_tokenizer(tokenizer):
    """Many decoder-only tokenizers have no pad token (Llama 3): pad with the EOS, which the attention mask hides
    and which keeps its label where it closes a completion."""
    if tokenizer.eos_token is None:
        raise DataError(f"{tokenizer.name_or_path}: the tokenizer has no EOS token to close a completion")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_class():
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM


def build_embedded(params: Params, tokenizer):
    """A small Llama-shaped model from `student.embedded` (weights seeded by the caller), as deep as the embedded T5
    (encoder + decoder layers) and as wide (d_model, d_ff, heads of d_kv), with tied embeddings as small LMs have."""
    from transformers import LlamaConfig, LlamaForCausalLM

    e, s = params.student.embedded, params.sft
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=e.d_model, intermediate_size=e.d_ff,
                         num_attention_heads=e.num_heads, num_key_value_heads=e.num_heads, head_dim=e.d_kv,
                         num_hidden_layers=e.num_layers + e.num_decoder_layers, attention_dropout=e.dropout_rate,
                         max_position_embeddings=s.max_source_length + s.max_target_length,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def new_tokens(ids, enc):
    """The generated part of `model.generate`'s output: what follows the (left-padded) prompts."""
    return ids[:, enc["input_ids"].shape[1]:]


# --- pretraining --------------------------------------------------------------------------------------------
def pretrain_collator(params: Params, tokenizer):
    """Next-token prediction on each sentence (token ids) closed by the EOS; padding carries no loss."""
    import torch

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def collate(rows: list[dict]) -> dict:
        seqs = [r["input_ids"] + [eos] for r in rows]
        width = max(map(len, seqs))
        return {"input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in seqs]),
                "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
                "labels": torch.tensor([s + [-100] * (width - len(s)) for s in seqs])}
    return collate


def probe_prompt(prompt: str) -> str:
    """A probe (a fact's wording cut before its category) is continued as it stands."""
    return prompt


# --- LoRA ----------------------------------------------------------------------------------------------------
def lora_config(params: Params):
    """peft's LoraConfig for `student.lora` (all linear layers of the blocks), or None when rank is 0."""
    lora = params.student.lora
    if lora.rank == 0:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ParamsError("student.lora.rank: LoRA needs peft (pip install -e '.[lora]'), or set rank 0") from None
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def finish(trainer) -> None:
    """Fold LoRA adapters into the weights of the trainer's (best) model before it is saved: the next stage, the test
    and `publish` read a plain checkpoint, and an iteration's reference is that plain model."""
    if _is_peft(trainer.model):
        trainer.model = trainer.model.merge_and_unload()


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


# --- phase 1 -------------------------------------------------------------------------------------------------
def sft_arguments(params: Params, **common):
    """TRL's SFTConfig: prompt-completion data, loss on the completion only, no packing and no shuffling (the
    curriculum sampler indexes the rows in order and makes the batches), a whole sequence up to max_source_length +
    max_target_length tokens."""
    from trl import SFTConfig

    s = params.sft
    return SFTConfig(**common, completion_only_loss=True, packing=False, shuffle_dataset=False,
                     max_length=s.max_source_length + s.max_target_length)


def sft_data(params: Params, stages: Mapping[str, Sequence[dict]], tokenizer):
    """The stage rows as TRL's prompt-completion dataset, concatenated in chain order, and the sequence lengths per
    stage (length grouping; TRL tokenises the dataset itself)."""
    from datasets import Dataset

    rows, lengths = [], {}
    for stage, data in stages.items():
        part = [{"prompt": r["input"], "completion": P.completion(r["target"])} for r in data]
        ids = tokenizer([p["prompt"] + p["completion"] for p in part])["input_ids"]
        rows += part
        lengths[stage] = [len(i) + 1 for i in ids]  # + the EOS
    return Dataset.from_list(rows), lengths


def sft_trainer(params: Params, model, tokenizer, rows, valid, held_out=None):
    """Phase 1's library Trainer, TRL's SFTTrainer, and its arguments (training.sft_trainer adds the curriculum); its
    eval dataset the held-out stage rows (a dict by stage, from `sft_data`; TRL tokenises each) whose loss evaluation
    adds."""
    from trl import SFTTrainer

    # The Trainer wants an eval dataset when it evaluates by steps; without held-out rows evaluation is the chain on
    # `valid` alone (the mixin's evaluate), so one training row stands in.
    return SFTTrainer, dict(model=model, train_dataset=rows, eval_dataset=held_out or rows.select(range(1)),
                            processing_class=tokenizer, peft_config=lora_config(params))
