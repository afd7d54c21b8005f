"""The classes chapter 1 re-derives inline compute exactly what the package's classes compute."""

import torch

from minillm.gpt.attention import AttentionHead, CausalSelfAttention, NaiveMultiHeadAttention
from notebook_utils import exec_tagged_cells

NOTEBOOK = "book/ch01_attention_gpt.ipynb"


def test_notebook_head_equals_package_head():
    ns = exec_tagged_cells(NOTEBOOK)
    torch.manual_seed(0)
    ours = ns["Head"](32, 8, 16)
    pkg = AttentionHead(32, 8, 16)
    pkg.load_state_dict({k: v for k, v in ours.state_dict().items() if k != "tril"})
    x = torch.randn(3, 16, 32)
    torch.testing.assert_close(ours(x), pkg(x))


def test_notebook_loop_and_batched_equal_package():
    ns = exec_tagged_cells(NOTEBOOK)
    torch.manual_seed(0)
    loop = ns["MultiHeadLoop"](32, 4, 16)
    naive = NaiveMultiHeadAttention(32, 4, 16)
    naive.load_state_dict({k: v for k, v in loop.state_dict().items() if not k.endswith("tril")})
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(loop(x), naive(x))

    batched_pkg = CausalSelfAttention.from_naive(naive, backend="manual")
    batched_nb = ns["BatchedAttention"](32, 4, 16)
    batched_nb.load_state_dict(batched_pkg.state_dict(), strict=False)
    torch.testing.assert_close(batched_nb(x), batched_pkg(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(batched_nb(x), loop(x), atol=1e-5, rtol=1e-5)


def test_notebook_rope_rotation_equals_package():
    from minillm.gpt.rope import RotaryEmbedding, apply_rope

    ns = exec_tagged_cells(NOTEBOOK)
    x = torch.randn(2, 3, 20, 16)
    for positions, base in ((torch.arange(20), 10_000.0), (torch.arange(300, 320), 500.0)):
        torch.testing.assert_close(ns["rope_rotate"](x, positions, base), apply_rope(x, *RotaryEmbedding(16, base)(positions)),
                                   atol=1e-5, rtol=1e-5)
