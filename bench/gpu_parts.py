"""The GPU check's measured parts beside the CSQA-preset pipeline (bench/gpu_check.py runs them, each in its budget):

- chain-<shape>: one chain pass (recall, analyze, summarize; 64 synthetic questions of CSQA's prompt lengths) of a
  t5-small- and a t5-base-shaped student, the original's way (one `Seq2SeqTrainer.predict` per step, at our token
  budget) against ours with the dynamic KV cache (today's), a static cache without compiling, and a static cache
  with the decode step compiled (transformers compiles it itself on a GPU; not on a CPU, where that row is skipped).
- train-<shape>: the paper's shapes from config, random init, at the presets' batch sizes, lengths and precision:
  t5-base and t5-large (batch 64, fp32, TF32 off) in plain loops (SFT: a Seq2SeqTrainer's step; DPO: batch 32 pairs,
  policy on chosen and rejected with the reference pass beside it, sigmoid + 0.5 x NLL), and a Qwen2.5-0.5B-shaped
  decoder through TRL's SFTTrainer and DPOTrainer (16 x 4 accumulated, bf16), with and without LoRA; then one chain
  pass. Per phase: step time (median after warm-up), tokens per second, peak GPU memory, and the model FLOPs
  utilisation against the device's bf16 peak (6 x parameters x tokens per training step; + 2 x for the reference
  pass; 2 x per token for a chain, encoder and decoder parameters apart for T5).

Every part has a `tiny` form (`--cpu`): the same code path on tiny configs, a couple of steps.
Synthetic data: a word-level tokenizer over w0..w1999, prompts of 70-200 words, completions of 30-70.
"""
from __future__ import annotations

import contextlib
import random
import statistics
import tempfile
import time

# bf16 dense peak per device (FLOP/s), by a lower-case substring of torch.cuda.get_device_name()
BF16_PEAK = [("h200", 989e12), ("h100 pcie", 756e12), ("h100", 989e12), ("a100", 312e12), ("l40s", 362e12),
             ("a10", 125e12), ("l4", 121e12)]

T5_SHAPES = {
    "t5-small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, num_decoder_layers=6),
    "t5-base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
    "t5-large": dict(d_model=1024, d_ff=4096, d_kv=64, num_heads=16, num_layers=24, num_decoder_layers=24),
}
QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                tie_word_embeddings=True, rms_norm_eps=1e-6)
TINY_T5 = dict(d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1)
TINY_QWEN = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=2003, max_position_embeddings=1024, tie_word_embeddings=True)
WORDS = 2000


def bf16_peak(device_name: str) -> float | None:
    name = device_name.lower()
    return next((p for key, p in BF16_PEAK if key in name), None)


# --- synthetic data --------------------------------------------------------------------------------------------
def word_tokenizer(model_max_length: int = 1024):
    """A fast tokenizer over w0..w{WORDS-1} (pad 0, eos 1, unk 2): no download, one token a word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length)


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(lo, hi)))


def questions(n: int, seed: int = 0, tiny: bool = False) -> list[dict]:
    """Chain inputs of CSQA's shape: a question and five options, prompts of 70-200 words (tiny: 10-20)."""
    rng = random.Random(seed)
    lo, hi = (8, 16) if tiny else (50, 170)
    out = []
    for i in range(n):
        opts = {x: words(rng, 1, 3) for x in "ABCDE"}
        block = f"Q: {words(rng, lo, hi)}\nOptions: " + ", ".join(f"{x}. {t}" for x, t in opts.items())
        out.append({"qid": f"q{i}", "block": block, "options": opts, "gt": "A"})
    return out


# --- measuring -------------------------------------------------------------------------------------------------
class Meter:
    """Wall time, peak GPU memory and the device's bf16 peak for the rows of one part."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.peak = bf16_peak(torch.cuda.get_device_name()) if self.cuda else None

    def sync(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def phase(self, row: dict):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        yield row
        self.sync()
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if self.cuda:
            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)

    def rates(self, row: dict, step_times: list[float], tokens_per_step: float, flops_per_step: float) -> dict:
        steps = step_times[2:] if len(step_times) > 3 else step_times  # after the warm-up steps
        dt = statistics.median(steps)
        row.update(steps=len(step_times), step_s=round(dt, 4), tokens_per_s=round(tokens_per_step / dt, 1),
                   tflops=round(flops_per_step / dt / 1e12, 2))
        if self.peak:
            row["mfu"] = round(flops_per_step / dt / self.peak, 4)
        return row


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def t5_split(model) -> tuple[int, int]:
    """(encoder parameters, decoder parameters with the LM head), the shared embedding counted in neither: per token
    a T5 runs its source through the first and its target through the second."""
    enc = _params(model.encoder) - model.shared.weight.numel()
    dec = _params(model.decoder) - model.shared.weight.numel() + model.lm_head.weight.numel()
    return enc, dec


def _loop(fn, steps: int, budget_s: float, meter: Meter) -> list[float]:
    """`fn()` up to `steps` times, within `budget_s` (at least 3); each call's wall time."""
    times, t_end = [], time.perf_counter() + budget_s
    for i in range(steps):
        meter.sync()
        t0 = time.perf_counter()
        fn()
        meter.sync()
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() > t_end:
            break
    return times


# --- the chain -------------------------------------------------------------------------------------------------
def chain_rows(model, tokenizer, qs: list[dict], max_new: int, meter: Meter, budget_s: float, flops_per_token,
               compile_ok: bool) -> list[dict]:
    """The original's way against ours with each KV cache; seq/s, generated tokens/s, ratios to the original."""
    import chain_speed

    from tinythinker.lm.chain import Decoding, run_chain

    t_end = time.perf_counter() + budget_s
    n_seq = sum(2 + len(q["options"]) for q in qs)

    def one(name, fn, **extra):
        row = {"variant": name, **extra}
        if time.perf_counter() > t_end:
            row["skipped"] = "the part's budget was spent"
            return row
        with meter.phase(row):
            fn()
        # a random-weight student writes its whole budget on every sequence (it never learns to stop)
        tokens = n_seq * max_new
        row.update(sequences=n_seq, seq_per_s=round(n_seq / row["seconds"], 2),
                   new_tokens_per_s=round(tokens / row["seconds"], 1))
        if meter.peak:
            row["mfu"] = round(flops_per_token * tokens / row["seconds"] / meter.peak, 5)
        return row

    def run_static(compiled: bool):
        model.generation_config.disable_compile = not compiled
        try:
            d = Decoding(max_new_tokens=max_new, cache_implementation="static")
            return run_chain(model, tokenizer, qs, recall=d, analyze=d, summarize=d, batch_size=256)
        finally:
            model.generation_config.disable_compile = False

    greedy = Decoding(max_new_tokens=max_new)
    run_chain(model, tokenizer, qs[:4], recall=greedy, analyze=greedy, summarize=greedy, batch_size=4)  # warm-up
    rows = [one(f"original: Trainer.predict per step, max_length {max_new + 1} (our budget)",
                lambda: chain_speed.original_chain(model, tokenizer, qs, max_new + 1), baseline=True),
            one("ours, dynamic KV cache (today)",
                lambda: run_chain(model, tokenizer, qs, recall=greedy, analyze=greedy, summarize=greedy,
                                  batch_size=256), cache="dynamic"),
            one("ours, static KV cache, not compiled", lambda: run_static(False), cache="static")]
    if compile_ok:
        rows.append(one("ours, static KV cache, decode step compiled (first pass: compiles)",
                        lambda: run_static(True), cache="static", compiled=True, cold=True))
        rows.append(one("ours, static KV cache, decode step compiled", lambda: run_static(True), cache="static",
                        compiled=True))
    else:
        rows.append({"variant": "ours, static KV cache, decode step compiled", "skipped":
                     "not on a CPU: transformers compiles the decode step on an accelerator only"})
    if model.device.type == "cpu":
        for r in rows:
            r["note"] = "the code path, tiny: not a measurement"
    base = rows[0].get("seq_per_s")
    for r in rows:
        if base and r.get("seq_per_s"):
            r["vs_original"] = round(r["seq_per_s"] / base, 2)
    dyn = rows[1].get("seq_per_s")
    for r in rows[2:]:
        if dyn and r.get("seq_per_s"):
            r["vs_dynamic"] = round(r["seq_per_s"] / dyn, 2)
    return rows


def t5_model(shape: dict, tokenizer, device, dtype):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(**shape, vocab_size=len(tokenizer), dropout_rate=0.1, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a t5-large's init on a CPU takes a while
        return T5ForConditionalGeneration(config).to(dtype=dtype)


def chain_part(shape_name: str, tiny: bool, device, budget_s: float) -> dict:
    """Part chain-<shape>: bf16 on a GPU (the check's precision for generation), fp32 on a CPU."""
    import torch

    meter = Meter(device)
    tok = word_tokenizer()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = t5_model(TINY_T5 if tiny else T5_SHAPES[shape_name], tok, device, dtype).eval()
    enc, dec = t5_split(model)
    qs = questions(8 if tiny else 64, tiny=tiny)
    max_new = 8 if tiny else 200  # the preset's generation.max_new_tokens
    compile_ok = device.type == "cuda"
    if tiny and shape_name == "t5-small":  # the compiled rows' code path on the CPU too (transformers' opt-in flag)
        from transformers.generation.configuration_utils import CompileConfig

        model.generation_config.compile_config = CompileConfig()
        model.generation_config.compile_config._compile_all_devices = True
        compile_ok = True
    rows = chain_rows(model, tok, qs, max_new, meter, budget_s, 2 * dec, compile_ok=compile_ok)
    return {"shape": "tiny" if tiny else shape_name, "dtype": str(dtype).removeprefix("torch."),
            "questions": len(qs), "max_new_tokens": max_new, "params_m": round(_params(model) / 1e6, 1),
            "encoder_params_m": round(enc / 1e6, 1), "decoder_params_m": round(dec / 1e6, 1), "rows": rows}


# --- training: T5 shapes ---------------------------------------------------------------------------------------
def _seq2seq_batch(tok, rng, n: int, src: tuple[int, int], tgt: tuple[int, int], device):
    enc = tok([words(rng, *src) for _ in range(n)], return_tensors="pt", padding=True)
    lab = tok([words(rng, *tgt) for _ in range(n)], return_tensors="pt", padding=True)["input_ids"]
    lab[lab == tok.pad_token_id] = -100
    return enc.to(device), lab.to(device)


def t5_train_part(shape_name: str, tiny: bool, device, budget_s: float) -> dict:
    """SFT and DPO steps of a t5-<shape> from config at the preset's batch sizes (SFT 64, DPO 32 pairs) and
    precision (fp32, TF32 off), then one chain pass (bf16 cast of the same weights is not made: fp32, as trained)."""
    import torch
    import torch.nn.functional as F

    meter = Meter(device)
    tok = word_tokenizer()
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the legacy flag may refuse once the new API was used
        matmul.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False
    model = t5_model(TINY_T5 if tiny else T5_SHAPES[shape_name], tok, device, torch.float32).train()
    enc_p, dec_p = t5_split(model)
    rng = random.Random(0)
    src, tgt = ((8, 16), (4, 8)) if tiny else ((70, 200), (30, 70))
    sft_bs, dpo_bs = (4, 2) if tiny else (64, 32)
    steps = 2 if tiny else 30
    share = budget_s / 3
    out = {"shape": "tiny" if tiny else shape_name, "dtype": "float32", "tf32": False,
           "params_m": round(_params(model) / 1e6, 1), "phases": []}

    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    batch = _seq2seq_batch(tok, rng, sft_bs, src, tgt, device)
    src_tokens = int(batch[0]["attention_mask"].sum())
    tgt_tokens = int((batch[1] != -100).sum())

    def sft_step():
        loss = model(**batch[0], labels=batch[1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    row = {"phase": "sft", "batch": sft_bs}
    with meter.phase(row):
        times = _loop(sft_step, steps, share, meter)
    meter.rates(row, times, src_tokens + tgt_tokens, 6 * (enc_p * src_tokens + dec_p * tgt_tokens))
    out["phases"].append(row)

    # DPO: the reference is a frozen copy (the project precomputes its log-probs once; here its pass is timed apart)
    import copy

    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-6)
    enc, _ = _seq2seq_batch(tok, rng, dpo_bs, src, tgt, device)
    pair_enc = {k: torch.cat([v, v]) for k, v in enc.items()}
    _, chosen = _seq2seq_batch(tok, rng, dpo_bs, tgt, tgt, device)
    _, rejected = _seq2seq_batch(tok, rng, dpo_bs, tgt, tgt, device)
    width = max(chosen.shape[1], rejected.shape[1])
    labels = torch.cat([F.pad(chosen, (0, width - chosen.shape[1]), value=-100),
                        F.pad(rejected, (0, width - rejected.shape[1]), value=-100)])

    def logps(m):
        logits = m(**pair_enc, labels=labels).logits.float()
        mask = labels != -100
        lp = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * mask).sum(-1), mask.sum(-1)

    def ref_pass():
        with torch.no_grad():
            return logps(ref)[0]

    ref_lp = ref_pass()

    def dpo_step():
        lp, n = logps(model)
        margin = 0.5 * ((lp[:dpo_bs] - ref_lp[:dpo_bs]) - (lp[dpo_bs:] - ref_lp[dpo_bs:]))
        loss = -F.logsigmoid(margin).mean() + 0.5 * (-(lp[:dpo_bs] / n[:dpo_bs]).mean())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    pair_src = int(pair_enc["attention_mask"].sum())
    pair_tgt = int((labels != -100).sum())
    for name, fn, mult in (("dpo_policy", dpo_step, 6), ("dpo_reference_pass", ref_pass, 2)):
        row = {"phase": name, "pairs": dpo_bs}
        with meter.phase(row):
            times = _loop(fn, steps, share / 2, meter)
        meter.rates(row, times, pair_src + pair_tgt, mult * (enc_p * pair_src + dec_p * pair_tgt))
        out["phases"].append(row)
    del ref, opt

    model.eval()
    qs = questions(8 if tiny else 64, tiny=tiny)
    max_new = 8 if tiny else 200
    from tinythinker.lm.chain import Decoding, run_chain

    d = Decoding(max_new_tokens=max_new)
    row = {"phase": "chain", "questions": len(qs), "max_new_tokens": max_new}
    n_seq = sum(2 + len(q["options"]) for q in qs)
    with meter.phase(row):
        times = _loop(lambda: run_chain(model, tok, qs, recall=d, analyze=d, summarize=d, batch_size=256), 1,
                      0, meter)
    meter.rates(row, times, n_seq * max_new, 2 * dec_p * n_seq * max_new)
    row["seq_per_s"] = round(n_seq / row["step_s"], 2)
    out["phases"].append(row)
    return out


# --- training: the decoder-only shape through TRL --------------------------------------------------------------
class _StepTimer:
    """A TrainerCallback: each optimizer step's wall time (synchronised)."""

    def __new__(cls, meter: Meter):
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            def __init__(self):
                self.times, self._t0 = [], None

            def on_step_begin(self, args, state, control, **kw):
                meter.sync()
                self._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                meter.sync()
                self.times.append(time.perf_counter() - self._t0)

        return Timer()


def qwen_train_part(lora: bool, tiny: bool, device, budget_s: float) -> dict:
    """A Qwen2.5-0.5B-shaped decoder from config through TRL as the causal preset trains it (batch 16 x 4
    accumulated, bf16 where the GPU has it, prompt-completion SFT; DPO batch 32 pairs, the reference log-probs
    precomputed as the project does, timed apart), with or without LoRA (rank 16, all linear layers); then one
    chain pass."""
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    meter = Meter(device)
    cuda = device.type == "cuda"
    tok = word_tokenizer()
    tok.padding_side = "left"
    shape = dict(TINY_QWEN if tiny else QWEN_05B)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**shape, pad_token_id=0, eos_token_id=1, bos_token_id=1))
    n_params = _params(model)
    rng = random.Random(0)
    src, tgt = ((8, 16), (4, 8)) if tiny else ((70, 200), (30, 70))
    micro, accum = (2, 2) if tiny else (16, 4)
    dpo_bs = 2 if tiny else 32
    steps = 2 if tiny else 12
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    out = {"shape": "tiny" if tiny else "qwen2.5-0.5b", "lora": lora, "params_m": round(n_params / 1e6, 1),
           "bf16": cuda, "phases": []}
    common = dict(bf16=cuda, tf32=cuda or None, use_cpu=not cuda, report_to="none", save_strategy="no",
                  logging_steps=1000, disable_tqdm=True, dataloader_pin_memory=False, seed=0)
    n = micro * accum * (steps + 1)
    sft_rows = Dataset.from_list([{"prompt": words(rng, *src), "completion": " " + words(rng, *tgt)}
                                  for _ in range(n)])
    with tempfile.TemporaryDirectory() as tmp:
        timer = _StepTimer(meter)
        args = SFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=micro,
                         gradient_accumulation_steps=accum, learning_rate=2e-5, completion_only_loss=True,
                         packing=False, max_length=512, **common)
        row = {"phase": "sft", "micro_batch": micro, "accumulation": accum}
        with meter.phase(row):
            trainer = SFTTrainer(model=model, args=args, train_dataset=sft_rows, processing_class=tok,
                                 peft_config=peft_config, callbacks=[timer])
            trainer.train()
        lens = [len(tok(r["prompt"] + r["completion"])["input_ids"]) for r in sft_rows.select(range(micro * accum))]
        tokens = sum(lens)
        trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        # full fine-tuning: 6N per token; LoRA: the frozen weights' forward and input gradients (4N) + the adapters'
        flops = (6 * n_params if not lora else 4 * n_params + 6 * trained) * tokens
        meter.rates(row, timer.times, tokens, flops)
        row["trainable_params_m"] = round(trained / 1e6, 2)
        out["phases"].append(row)
        model = trainer.model
        if lora:
            model = model.merge_and_unload()
        del trainer

        pairs = Dataset.from_list([{"prompt": words(rng, *src), "chosen": " " + words(rng, *tgt),
                                    "rejected": " " + words(rng, *tgt)} for _ in range(dpo_bs * (steps + 1))])
        timer = _StepTimer(meter)
        args = DPOConfig(output_dir=tmp + "/dpo", max_steps=steps, per_device_train_batch_size=dpo_bs,
                         learning_rate=1e-6, beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                         precompute_ref_log_probs=True, precompute_ref_batch_size=dpo_bs, max_length=512, **common)
        row = {"phase": "dpo", "pairs": dpo_bs}
        with meter.phase(row):
            t0 = time.perf_counter()
            trainer = DPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok,
                                 peft_config=peft_config, callbacks=[timer])
            meter.sync()
            row["reference_precompute_s"] = round(time.perf_counter() - t0, 2)
            trainer.train()
        r0 = pairs[0]
        pair_tokens = dpo_bs * (2 * len(tok(r0["prompt"])["input_ids"]) + len(tok(r0["chosen"])["input_ids"])
                                + len(tok(r0["rejected"])["input_ids"]))
        trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        flops = (6 * n_params if not lora else 4 * n_params + 6 * trained) * pair_tokens
        meter.rates(row, timer.times, pair_tokens, flops)
        out["phases"].append(row)
        model = trainer.model
        if lora:
            model = model.merge_and_unload()
        del trainer

    from tinythinker.lm.chain import Decoding, run_chain

    model.eval()
    qs = questions(8 if tiny else 32, tiny=tiny)
    max_new = 8 if tiny else 200
    d = Decoding(max_new_tokens=max_new)
    n_seq = sum(2 + len(q["options"]) for q in qs)
    row = {"phase": "chain", "questions": len(qs), "max_new_tokens": max_new}
    with meter.phase(row):
        times = _loop(lambda: run_chain(model, tok, qs, recall=d, analyze=d, summarize=d, batch_size=64), 1, 0,
                      meter)
    meter.rates(row, times, n_seq * max_new, 2 * n_params * n_seq * max_new)
    row["seq_per_s"] = round(n_seq / row["step_s"], 2)
    out["phases"].append(row)
    return out


# name -> (budget on a GPU in seconds, function(tiny, device, budget))
# (the chain parts' budgets hold the compiles of the static-cache rows: one per distinct batch shape; a row that
# would start past its part's budget is skipped and says so)
PARTS = {
    "chain-t5-small": (90, lambda tiny, dev, b: chain_part("t5-small", tiny, dev, b)),
    "chain-t5-base": (90, lambda tiny, dev, b: chain_part("t5-base", tiny, dev, b)),
    "train-t5-base": (35, lambda tiny, dev, b: t5_train_part("t5-base", tiny, dev, b)),
    "train-t5-large": (45, lambda tiny, dev, b: t5_train_part("t5-large", tiny, dev, b)),
    "train-qwen2.5-0.5b": (35, lambda tiny, dev, b: qwen_train_part(False, tiny, dev, b)),
    "train-qwen2.5-0.5b-lora": (30, lambda tiny, dev, b: qwen_train_part(True, tiny, dev, b)),
}
