"""Chapter 1 — causal self-attention and a small GPT.

One head → a per-head loop → batched multi-head attention (equal to ``F.scaled_dot_product_attention``),
a GPT-2-style model on character-level Shakespeare with learned or rotary position embeddings, sampling with
temperature and top-k, and a KV cache — fixed (refilled when the window slides) or sliding (with RoPE).

Modules: :mod:`~minillm.gpt.attention`, :mod:`~minillm.gpt.rope`, :mod:`~minillm.gpt.kv_cache`,
:mod:`~minillm.gpt.model`, :mod:`~minillm.gpt.generation`, :mod:`~minillm.gpt.train`.
"""

from minillm.gpt.attention import AttentionHead, CausalSelfAttention, NaiveMultiHeadAttention, attention, causal_mask
from minillm.gpt.generation import generate, sample_next
from minillm.gpt.kv_cache import KVCache, LayerKVCache
from minillm.gpt.model import GPT, GPT_PRESETS, MLP, Block, GPTConfig, gpt_config, load_gpt
from minillm.gpt.rope import RotaryEmbedding, apply_rope, rope_frequencies, rotate_half
from minillm.gpt.train import (LM_TRAIN_FULL, LM_TRAIN_TINY, LMTrainConfig, TrainHistory, estimate_loss, evaluate_loss,
                               perplexity, train_lm)

__all__ = [
    "AttentionHead", "CausalSelfAttention", "NaiveMultiHeadAttention", "attention", "causal_mask", "generate",
    "sample_next", "KVCache", "LayerKVCache", "GPT", "GPT_PRESETS", "MLP", "Block", "GPTConfig", "gpt_config",
    "load_gpt", "RotaryEmbedding", "apply_rope", "rope_frequencies", "rotate_half", "LM_TRAIN_FULL", "LM_TRAIN_TINY",
    "LMTrainConfig", "TrainHistory", "estimate_loss", "evaluate_loss", "perplexity", "train_lm",
]
