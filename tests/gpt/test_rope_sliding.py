"""Rotary position embeddings equal two reference formulations; the sliding KV cache equals sliding-window attention."""

import os

import pytest
import torch

from minillm.core.checkpoint import save_model
from minillm.gpt import GPT, GPTConfig, load_gpt
from minillm.gpt.attention import CausalSelfAttention, causal_mask
from minillm.gpt.generation import generate
from minillm.gpt.kv_cache import KVCache, LayerKVCache
from minillm.gpt.rope import RotaryEmbedding, apply_rope, rope_frequencies, rotate_half


def _rope_gpt(n_layer=2, block_size=8, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=20, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=16, position="rope", **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():  # sharper than the 0.02 init, so attention patterns (and their differences) are not flat
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return model


def test_rope_equals_the_llama_reference():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    from transformers.models.llama.modeling_llama import rotate_half as llama_rotate_half

    hs, n_head, T = 16, 3, 40
    config = LlamaConfig(hidden_size=hs * n_head, num_attention_heads=n_head, max_position_embeddings=256,
                         rope_theta=500.0)
    positions = torch.arange(100, 100 + T)
    cos_ref, sin_ref = LlamaRotaryEmbedding(config)(torch.zeros(1, T, hs), positions[None])  # (1, T, hs)
    cos, sin = RotaryEmbedding(hs, base=500.0)(positions)
    # angles m·θ of up to ~140 rad carry float32 rounding of ~1e-5 (the two compute θ in different orders)
    torch.testing.assert_close(cos, cos_ref[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(sin, sin_ref[0], atol=2e-5, rtol=0)
    q, k = torch.randn(2, n_head, T, hs), torch.randn(2, n_head, T, hs)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    torch.testing.assert_close(apply_rope(q, cos, sin), q_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_ref, atol=1e-4, rtol=0)
    # with the same tables the two rotations agree to the last bit of float arithmetic
    torch.testing.assert_close(apply_rope(q, cos_ref[0], sin_ref[0]), apply_rotary_pos_emb(q, k, cos_ref, sin_ref)[0])
    torch.testing.assert_close(rotate_half(q), llama_rotate_half(q))


def test_rope_equals_the_complex_number_form():
    hs, T = 8, 12
    x = torch.randn(3, T, hs, dtype=torch.float64)
    positions = torch.arange(5, 5 + T)
    theta = 10_000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
    z = torch.complex(x[..., :hs // 2], x[..., hs // 2:])  # pair i with i + hs/2
    rotated = z * torch.polar(torch.ones(T, hs // 2, dtype=torch.float64), positions[:, None] * theta)
    expected = torch.cat([rotated.real, rotated.imag], dim=-1)
    cos, sin = RotaryEmbedding(hs)(positions)
    torch.testing.assert_close(apply_rope(x.float(), cos, sin), expected.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope_frequencies(hs), theta.float())


def test_rope_scores_depend_only_on_the_offset_and_keep_norms():
    hs = 32
    rope = RotaryEmbedding(hs)
    q, k = torch.randn(1, hs), torch.randn(1, hs)  # one position each

    def score(m, n):
        return (apply_rope(q, *rope(torch.tensor([m]))) @ apply_rope(k, *rope(torch.tensor([n]))).T).item()

    assert score(7, 3) == pytest.approx(score(107, 103), abs=1e-4)
    assert score(7, 3) == pytest.approx(score(4, 0), abs=1e-4)
    assert abs(score(7, 3) - score(7, 5)) > 1e-3  # but it does depend on the offset
    c, s = rope(torch.arange(50))
    torch.testing.assert_close(apply_rope(q.expand(50, hs), c, s).norm(dim=-1), q.norm().expand(50))


def test_windowed_mask_is_a_band():
    assert causal_mask(4, 4, window=2).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    # the two newest queries of six keys, window 3: query 4 sees 2..4, query 5 sees 3..5
    assert causal_mask(2, 6, window=3).int().tolist() == [[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    assert torch.equal(causal_mask(5, 5, window=5), causal_mask(5, 5))


@pytest.mark.parametrize("max_len", [4, 5, 8])  # 4 = the window: the buffers shift at every step
@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_sliding_layer_cache_equals_sliding_window_attention(max_len, backend):
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2, block_size=4, backend=backend, window=4).eval()
    x = torch.randn(2, 19, 16)
    full = attn(x)  # one pass: every query sees its last 4 positions
    cache = LayerKVCache(2, 2, max_len, 8, window=4)
    parts = [attn(x[:, :3], cache)]
    parts += [attn(x[:, t:t + 1], cache) for t in range(3, 14)]
    step = max_len - 3  # the largest chunk the buffers take
    parts += [attn(x[:, t:t + step], cache) for t in range(14, 19, step)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.position == 19 and cache.length <= max_len


def test_sliding_cache_refuses_a_chunk_larger_than_its_buffers():
    cache = LayerKVCache(1, 1, 6, 2, window=4)
    cache.append(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    with pytest.raises(ValueError, match="feed at most 3 at a time"):
        cache.append(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))


@pytest.mark.parametrize("top_k", [None, 5])
def test_sliding_cache_decoding_equals_one_pass_of_sliding_window_attention(top_k):
    model = _rope_gpt(n_layer=3)
    prompt = torch.randint(0, 20, (2, 3))
    n_new = 4 * model.config.block_size
    cached, logits = generate(model, prompt, n_new, top_k=top_k, use_cache=True,
                              generator=torch.Generator().manual_seed(0), return_logits=True)
    recomputed = generate(model, prompt, n_new, top_k=top_k, use_cache=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cached, recomputed)
    reference = model(cached)[0][:, prompt.size(1) - 1:-1]  # one forward pass, banded mask, true positions
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_sliding_prefill_of_a_prompt_longer_than_the_window():
    model = _rope_gpt()
    prompt = torch.randint(0, 20, (1, 30))  # almost 4 windows
    out, logits = generate(model, prompt, 10, temperature=0.0, return_logits=True)
    torch.testing.assert_close(logits, model(out)[0][:, 29:-1], atol=1e-4, rtol=1e-4)


def test_cropping_equals_sliding_window_in_one_layer_only():
    """One layer: a query sees the same last W keys either way, and RoPE only sees offsets. Two layers: a cached key
    in layer 1 was computed from hidden states that saw tokens which have left the window — cropping forgets them."""
    for n_layer, same in ((1, True), (2, False)):
        model = _rope_gpt(n_layer=n_layer)
        w = model.config.block_size
        idx = torch.randint(0, 20, (2, 3 * w))
        swa = model(idx)[0][:, -1]
        cropped = model(idx[:, -w:])[0][:, -1]  # positions 0..W-1 instead of 2W..3W-1
        gap = (swa - cropped).abs().max().item()
        assert (gap < 1e-4) if same else (gap > 1e-2), (n_layer, gap)


def test_rope_model_inside_the_window_is_plain_causal_attention():
    model = _rope_gpt()
    idx = torch.randint(0, 20, (2, 20))
    w = model.config.block_size
    torch.testing.assert_close(model(idx)[0][:, :w], model(idx[:, :w])[0], atol=1e-5, rtol=1e-5)


def test_new_cache_kinds():
    learned = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16))
    rope = _rope_gpt()
    fixed, sliding = learned.new_cache(3), rope.new_cache(3)
    assert not fixed.sliding and fixed.max_len == 8
    assert sliding.sliding and sliding.window == 8 and sliding.max_len == 16
    assert sliding.nbytes() == 2 * fixed.nbytes() == KVCache(2, 3, 2, 16, 8).nbytes()


def test_rope_checkpoint_holds_no_frequencies_and_roundtrips(tmp_path):
    model = _rope_gpt()
    assert not any("inv_freq" in k for k in model.state_dict())
    assert model.num_params() == model.num_params(non_embedding=False)  # no position table to exclude
    path = save_model(model, tmp_path / "rope.safetensors")
    loaded = load_gpt(path).eval()
    assert loaded.config.position == "rope"
    idx = torch.randint(0, 20, (1, 20))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0])


def test_learned_positions_still_refuse_long_inputs():
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="exceeds block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
