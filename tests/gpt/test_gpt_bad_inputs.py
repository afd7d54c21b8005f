"""Bad inputs to chapter 1's attention, GPT, KV cache, generation and training fail early, naming problem and fix."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bad_inputs import BadInput, cases_param, check_case
from minillm.core.checkpoint import save_model
from minillm.data.lm_batches import TokenSplits
from minillm.gpt import (GPT, MLP, AttentionHead, Block, CausalSelfAttention, GPTConfig, KVCache, LayerKVCache,
                         LMTrainConfig, NaiveMultiHeadAttention, RotaryEmbedding, apply_rope, attention, causal_mask,
                         estimate_loss, evaluate_loss, generate, gpt_config, load_gpt, perplexity, rope_frequencies,
                         rotate_half, sample_next, train_lm)

CFG = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)
ROPE_CFG = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, position="rope")
MODEL = GPT(CFG).eval()
ROPE = GPT(ROPE_CFG).eval()
PROMPT = torch.zeros(1, 2, dtype=torch.long)
SPLITS = TokenSplits.from_tokens(torch.arange(400) % 10, val_fraction=0.25)
QKV = torch.randn(1, 2, 4, 6)


def _checkpoint(kind: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ch01-bad-"))
    path = folder / "gpt.safetensors"
    if kind == "missing":
        return path
    save_model(MODEL, path)
    if kind == "corrupt":
        path.write_bytes(path.read_bytes()[:40])  # truncated: the header promises more bytes than remain
    elif kind == "other model":
        save_model(GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16)), path)
        path.with_suffix(".json").write_text(path.with_suffix(".json").read_text().replace('"n_embd": 16', '"n_embd": 8'))
    return path


def _full_layer_cache():
    cache = LayerKVCache(1, 2, 4, 3)
    cache.append(torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 4, 3))
    return cache.append(torch.zeros(1, 2, 1, 3), torch.zeros(1, 2, 1, 3))


CASES = [
    # attention
    BadInput("minillm.gpt.attention", "keys of another head size than the queries",
             lambda: attention(QKV, torch.randn(1, 2, 4, 5), torch.randn(1, 2, 4, 5)), ValueError,
             r"one d and one T_k.*split heads the same way"),
    BadInput("minillm.gpt.attention", "a float mask instead of a boolean one",
             lambda: attention(QKV, QKV, QKV, torch.ones(4, 4)), ValueError, r"mask must be a bool tensor.*causal_mask\(\)"),
    BadInput("minillm.gpt.causal_mask", "more queries than keys",
             lambda: causal_mask(5, 2), ValueError, "more queries.*queries must be the newest positions"),
    BadInput("minillm.gpt.causal_mask", "a window of 0 positions",
             lambda: causal_mask(3, 3, window=0), ValueError, "window must be a positive number"),
    BadInput("minillm.gpt.AttentionHead", "an input longer than block_size",
             lambda: AttentionHead(8, 4, 4)(torch.randn(1, 5, 8)), ValueError, "exceeds block_size=4; crop the context"),
    BadInput("minillm.gpt.AttentionHead", "an input of the wrong width",
             lambda: AttentionHead(8, 4, 4)(torch.randn(1, 4, 6)), ValueError, r"expected input of shape \(B, T, 8\)"),
    BadInput("minillm.gpt.NaiveMultiHeadAttention", "an embedding width that n_head does not divide",
             lambda: NaiveMultiHeadAttention(10, 4, 8), ValueError, "must be a positive multiple of n_head"),
    BadInput("minillm.gpt.CausalSelfAttention", "an input of the wrong width",
             lambda: CausalSelfAttention(8, 2, 8)(torch.randn(1, 4, 6)), ValueError, r"expected input of shape \(B, T, 8\)"),
    BadInput("minillm.gpt.CausalSelfAttention", "an unknown backend",
             lambda: CausalSelfAttention(8, 2, 8, backend="flash"), ValueError, "backend must be 'manual' or 'sdpa'"),
    BadInput("minillm.gpt.CausalSelfAttention", "a negative window",
             lambda: CausalSelfAttention(8, 2, 8, window=-1), ValueError, "window must be None or a positive number"),
    BadInput("minillm.gpt.CausalSelfAttention", "a fixed cache given to a sliding-window layer",
             lambda: CausalSelfAttention(8, 2, 8, window=8)(torch.randn(1, 1, 8), LayerKVCache(1, 2, 8, 4)), ValueError,
             r"cache's window.*make the cache with the model's new_cache\(\)"),
    # rotary embeddings
    BadInput("minillm.gpt.rope_frequencies", "an odd head size",
             lambda: rope_frequencies(7), ValueError, "head_size must be a positive even number.*choose n_embd / n_head even"),
    BadInput("minillm.gpt.rope_frequencies", "a base of 1 (every frequency equal)",
             lambda: rope_frequencies(8, base=1.0), ValueError, r"base must be > 1 \(10000 in most models\)"),
    BadInput("minillm.gpt.RotaryEmbedding", "float positions",
             lambda: RotaryEmbedding(8)(torch.linspace(0, 1, 4)), ValueError,
             r"1-D tensor of integer positions.*torch.arange\(start, start \+ T\)"),
    BadInput("minillm.gpt.apply_rope", "tables for fewer positions than x has",
             lambda: apply_rope(torch.randn(1, 2, 5, 8), *RotaryEmbedding(8)(torch.arange(4))), ValueError,
             r"cos and sin must be \(T, hs\) = \(5, 8\).*for the positions of x"),
    BadInput("minillm.gpt.rotate_half", "an odd last dimension",
             lambda: rotate_half(torch.randn(2, 5)), ValueError, "last dimension must be even.*use an even head_size"),
    # the cache
    BadInput("minillm.gpt.LayerKVCache", "appending past a full fixed cache",
             _full_layer_cache, ValueError, "cannot take 1 more; call reset"),
    BadInput("minillm.gpt.LayerKVCache", "a window larger than the buffers",
             lambda: LayerKVCache(1, 2, 4, 3, window=5), ValueError, "window must be a positive integer <= max_len=4"),
    BadInput("minillm.gpt.LayerKVCache", "keys of another head count than the cache",
             lambda: LayerKVCache(1, 2, 4, 3).append(torch.zeros(1, 3, 1, 3), torch.zeros(1, 3, 1, 3)), ValueError,
             r"cache expects.*new_cache\(batch_size\)"),
    BadInput("minillm.gpt.KVCache", "an integer dtype",
             lambda: KVCache(1, 1, 2, 4, 3, dtype=torch.int64), ValueError, "floating-point torch.dtype.*model's dtype"),
    BadInput("minillm.gpt.KVCache", "zero layers",
             lambda: KVCache(0, 1, 2, 4, 3), ValueError, "n_layer must be a positive integer.*config.n_layer"),
    # the model and its config
    BadInput("minillm.gpt.GPTConfig", "n_embd not divisible by n_head",
             lambda: GPTConfig(n_embd=30, n_head=4), ValueError, "must be divisible by n_head"),
    BadInput("minillm.gpt.GPTConfig", "an unknown position encoding",
             lambda: GPTConfig(position="alibi"), ValueError, r"position must be 'learned' \(absolute embeddings\) or 'rope'"),
    BadInput("minillm.gpt.GPTConfig", "RoPE with an odd head size",
             lambda: GPTConfig(n_embd=12, n_head=4, position="rope"), ValueError, "head_size.*must be even; change n_embd"),
    BadInput("minillm.gpt.GPTConfig", "a dropout of 1.5",
             lambda: GPTConfig(dropout=1.5), ValueError, r"dropout must be in \[0, 1\)"),
    BadInput("minillm.gpt.gpt_config", "an unknown preset",
             lambda: gpt_config("gpt-huge", 65), ValueError, "unknown GPT preset 'gpt-huge'; choose one of"),
    BadInput("minillm.gpt.gpt_config", "a misspelt override",
             lambda: gpt_config("gpt-tiny", 65, n_layers=2), ValueError, r"no field\(s\) \['n_layers'\]; choose among"),
    BadInput("minillm.gpt.GPT", "a token id equal to the vocabulary size",
             lambda: MODEL(torch.tensor([[1, 10]])), ValueError,
             r"token ids must lie in \[0, 10\).*got values in \[1, 10\]; encode with the tokenizer"),
    BadInput("minillm.gpt.GPT", "a negative token id",
             lambda: MODEL(torch.tensor([[-1, 2]])), ValueError, r"must lie in \[0, 10\)"),
    BadInput("minillm.gpt.GPT", "float token ids",
             lambda: MODEL(torch.zeros(1, 4)), ValueError, r"integer token ids \(torch.long\).*idx.long\(\)"),
    BadInput("minillm.gpt.GPT", "a 1-D prompt with no batch dimension",
             lambda: MODEL(torch.zeros(4, dtype=torch.long)), ValueError, r"\(B, T\) token ids.*unsqueeze\(0\)"),
    BadInput("minillm.gpt.GPT", "targets of another shape than the inputs",
             lambda: MODEL(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)), ValueError,
             r"targets must have the shape of idx \(2, 4\)"),
    BadInput("minillm.gpt.GPT", "a context longer than block_size with learned positions",
             lambda: MODEL(torch.zeros(1, 9, dtype=torch.long)), ValueError, "exceeds block_size=8; crop to the last 8"),
    BadInput("minillm.gpt.GPT", "a cache made for another batch size",
             lambda: MODEL(torch.zeros(2, 1, dtype=torch.long), cache=MODEL.new_cache(1)), ValueError,
             r"batch size 1.*model.new_cache\(2\)"),
    BadInput("minillm.gpt.GPT", "a config dict instead of a GPTConfig",
             lambda: GPT({"n_layer": 2}), TypeError, r"GPT takes a GPTConfig.*gpt_config\(preset, vocab_size\)"),
    BadInput("minillm.gpt.MLP", "a config of another kind",
             lambda: MLP(object()), TypeError, "MLP takes a GPTConfig"),
    BadInput("minillm.gpt.Block", "a config of another kind",
             lambda: Block(object()), TypeError, "Block takes a GPTConfig"),
    BadInput("minillm.gpt.load_gpt", "a missing checkpoint",
             lambda: load_gpt(_checkpoint("missing")), FileNotFoundError, "no config file.*save_model"),
    BadInput("minillm.gpt.load_gpt", "a truncated safetensors file",
             lambda: load_gpt(_checkpoint("corrupt")), ValueError, "not a readable safetensors file.*save the model again"),
    BadInput("minillm.gpt.load_gpt", "weights of another model beside this config",
             lambda: load_gpt(_checkpoint("other model")), ValueError, "does not fit a GPT.*model class and config"),
    # generation
    BadInput("minillm.gpt.generate", "an empty prompt",
             lambda: generate(MODEL, torch.zeros(1, 0, dtype=torch.long), 5), ValueError,
             r"prompt is empty.*start from a newline"),
    BadInput("minillm.gpt.generate", "a 1-D prompt",
             lambda: generate(MODEL, torch.zeros(3, dtype=torch.long), 5), ValueError, r"\(B, T\).*prompt.unsqueeze\(0\)"),
    BadInput("minillm.gpt.generate", "a prompt with a token outside the vocabulary",
             lambda: generate(ROPE, torch.tensor([[3, 12]]), 5), ValueError, r"token ids must lie in \[0, 10\)"),
    BadInput("minillm.gpt.generate", "a negative temperature",
             lambda: generate(MODEL, PROMPT, 5, temperature=-0.5), ValueError, r"temperature must be a finite number >= 0"),
    BadInput("minillm.gpt.generate", "top_k = 0",
             lambda: generate(MODEL, PROMPT, 5, top_k=0), ValueError, r"top_k must be a positive integer or None"),
    BadInput("minillm.gpt.generate", "a fractional number of new tokens",
             lambda: generate(MODEL, PROMPT, 2.5), ValueError, "max_new_tokens must be an integer >= 0"),
    BadInput("minillm.gpt.generate", "a module that is not a language model",
             lambda: generate(torch.nn.Linear(2, 2), PROMPT, 2), TypeError, r"needs a minillm language model \(with .config"),
    BadInput("minillm.gpt.sample_next", "NaN logits",
             lambda: sample_next(torch.tensor([[0.0, float("nan")]])), ValueError,
             "NaN or \\+inf.*check the loss and reload the checkpoint"),
    BadInput("minillm.gpt.sample_next", "a temperature of NaN",
             lambda: sample_next(torch.zeros(1, 3), temperature=float("nan")), ValueError, "temperature must be a finite"),
    BadInput("minillm.gpt.sample_next", "a fractional top_k",
             lambda: sample_next(torch.zeros(1, 3), top_k=1.5), ValueError, "top_k must be a positive integer"),
    BadInput("minillm.gpt.sample_next", "logits without a batch dimension",
             lambda: sample_next(torch.zeros(3)), ValueError, r"float tensor \(B, V\).*model\(idx\)\[0\]\[:, -1\]"),
    BadInput("minillm.gpt.sample_next", "a row masked to -inf everywhere",
             lambda: sample_next(torch.full((1, 3), float("-inf"))), ValueError, "-inf everywhere.*mask fewer tokens"),
    # training and evaluation
    BadInput("minillm.gpt.LMTrainConfig", "zero iterations",
             lambda: LMTrainConfig(max_iters=0), ValueError, "max_iters must be a positive integer"),
    BadInput("minillm.gpt.LMTrainConfig", "a warm-up longer than training",
             lambda: LMTrainConfig(max_iters=10, warmup_iters=20), ValueError, "shorten the warm-up or train longer"),
    BadInput("minillm.gpt.LMTrainConfig", "a final learning rate above the peak",
             lambda: LMTrainConfig(learning_rate=1e-3, min_lr=1e-2), ValueError, "need 0 <= min_lr <= learning_rate"),
    BadInput("minillm.gpt.estimate_loss", "zero evaluation batches",
             lambda: estimate_loss(MODEL, SPLITS, 8, 2, 0, torch.Generator()), ValueError, "eval_iters must be a positive"),
    BadInput("minillm.gpt.evaluate_loss", "a split shorter than one window",
             lambda: evaluate_loss(MODEL, torch.arange(5), 8), ValueError, "needs more than 8 tokens.*pass a longer split"),
    BadInput("minillm.gpt.evaluate_loss", "float data instead of token ids",
             lambda: evaluate_loss(MODEL, torch.randn(100), 8), ValueError, "1-D tensor of token ids"),
    BadInput("minillm.gpt.perplexity", "a NaN loss",
             lambda: perplexity(float("nan")), ValueError, "finite cross-entropy.*lower the learning rate"),
    BadInput("minillm.gpt.perplexity", "a loss that overflows exp",
             lambda: perplexity(1e4), ValueError, "overflows exp.*check the units"),
    BadInput("minillm.gpt.train_lm", "a model smaller than the data's vocabulary",
             lambda: train_lm(GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)), SPLITS,
                              LMTrainConfig(max_iters=1, warmup_iters=0, eval_interval=1, eval_iters=1), progress=False),
             ValueError, r"token ids must lie in \[0, 5\)"),
    BadInput("minillm.gpt.train_lm", "a config dict instead of an LMTrainConfig",
             lambda: train_lm(MODEL, SPLITS, {"max_iters": 1}), TypeError, "cfg must be an LMTrainConfig"),
    BadInput("minillm.gpt.train_lm", "a validation split shorter than one window",
             lambda: train_lm(MODEL, TokenSplits(torch.arange(100) % 10, torch.arange(5)), LMTrainConfig(max_iters=1,
                              warmup_iters=0)), ValueError, "each split needs more than block_size=8 tokens"),
]

EXEMPT = {
    "minillm.gpt.TrainHistory": "a plain record of a finished run (lists of losses, times) that train_lm fills in",
}


@cases_param(CASES)
def test_bad_input_is_rejected_clearly(case):
    check_case(case)
