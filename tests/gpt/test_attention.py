import pytest
import torch
import torch.nn.functional as F

from minillm.gpt.attention import AttentionHead, CausalSelfAttention, NaiveMultiHeadAttention, attention, causal_mask
from minillm.gpt.kv_cache import KVCache, LayerKVCache


def test_causal_mask_square_and_offset():
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4).tril().bool())
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    with pytest.raises(ValueError, match="more queries"):
        causal_mask(5, 2)


def test_attention_equals_sdpa():
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, causal_mask(10, 10)),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))
    torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_single_head_equals_sdpa_values_and_gradients():
    head = AttentionHead(n_embd=16, head_size=8, block_size=12)
    x = torch.randn(3, 12, 16, requires_grad=True)
    ours = head(x)
    ref = F.scaled_dot_product_attention(head.query(x), head.key(x), head.value(x), is_causal=True)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, [x, *head.parameters()], g),
                    torch.autograd.grad(ref, [x, *head.parameters()], g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_batched_equals_naive_loop_values_and_gradients(backend):
    naive = NaiveMultiHeadAttention(n_embd=32, n_head=4, block_size=16)
    batched = CausalSelfAttention.from_naive(naive, backend=backend)
    x = torch.randn(2, 16, 32, requires_grad=True)
    a, b = naive(x), batched(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(a)
    torch.testing.assert_close(torch.autograd.grad(a, x, g)[0], torch.autograd.grad(b, x, g)[0], atol=1e-5, rtol=1e-5)


def test_manual_and_sdpa_backends_agree_including_weight_gradients():
    torch.manual_seed(1)
    manual = CausalSelfAttention(32, 4, 16, backend="manual")
    sdpa = CausalSelfAttention(32, 4, 16, backend="sdpa")
    sdpa.load_state_dict(manual.state_dict())
    x = torch.randn(2, 16, 32)
    a, b = manual(x), sdpa(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    for pa, pb in zip(manual.parameters(), sdpa.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4)


def test_causality_future_tokens_do_not_leak():
    attn = CausalSelfAttention(16, 2, 8)
    x = torch.randn(1, 8, 16)
    y = attn(x)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 16)
    torch.testing.assert_close(attn(x2)[:, :5], y[:, :5])


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_cached_decoding_equals_full_attention(backend):
    attn = CausalSelfAttention(32, 4, 16, backend=backend).eval()
    x = torch.randn(2, 10, 32)
    full = attn(x)
    cache = LayerKVCache(2, 4, 16, 8)
    prefix = attn(x[:, :6], cache)
    steps = [attn(x[:, t:t + 1], cache) for t in range(6, 8)]
    chunk = attn(x[:, 8:], cache)  # several new queries at once: the mask must be bottom-right aligned
    torch.testing.assert_close(torch.cat([prefix, *steps, chunk], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 10


def test_input_errors_name_the_problem():
    attn = CausalSelfAttention(32, 4, 8)
    with pytest.raises(ValueError, match=r"\(B, T, 32\)"):
        attn(torch.randn(2, 8, 16))
    with pytest.raises(ValueError, match="exceeds block_size=8"):
        attn(torch.randn(1, 9, 32))
    with pytest.raises(ValueError, match="multiple of n_head"):
        CausalSelfAttention(30, 4, 8)
    with pytest.raises(ValueError, match="backend"):
        CausalSelfAttention(32, 4, 8, backend="flash")
    with pytest.raises(ValueError, match="exceeds block_size"):
        AttentionHead(8, 4, 4)(torch.randn(1, 5, 8))


def test_kv_cache_bookkeeping_and_errors():
    cache = KVCache(n_layer=2, batch_size=1, n_head=2, max_len=4, head_size=3)
    assert cache.length == 0 and cache.max_len == 4
    assert cache.nbytes() == 2 * 2 * 1 * 2 * 4 * 3 * 4
    k, v = cache.layers[0].append(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 3))
    assert k.shape == (1, 2, 3, 3) and cache.length == 3
    with pytest.raises(ValueError, match="cannot take 2 more"):
        cache.layers[0].append(torch.ones(1, 2, 2, 3), torch.ones(1, 2, 2, 3))
    with pytest.raises(ValueError, match="cache expects"):
        cache.layers[1].append(torch.ones(1, 3, 1, 3), torch.ones(1, 3, 1, 3))
    cache.reset()
    assert cache.length == 0
