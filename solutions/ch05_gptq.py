# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 5 exercises: quantization grids, Hessians, act-order and packing
#
# Fill in each code cell where it says `YOUR CODE HERE`, then run the check cell below it: the checks compare your
# code with `minillm.quant`. The chapter is `book/ch05_gptq.ipynb`; worked answers are in `solutions/ch05_gptq.ipynb`.

# %% tags=["nbval-ignore-output"]
import torch

from minillm.core.notebook import chapter_setup

ctx = chapter_setup("Chapter 5 exercises", minutes_tiny=0.2, minutes_full=0.2)


# %% [markdown]
# ## Exercise 1: symmetric, grouped round-to-nearest
#
# Write `rtn_sym_grouped(W, bits, groupsize)` for a weight `W` of shape $(N, K)$: split the $K$ input columns into
# groups of `groupsize`; in every row and group use the symmetric grid $s = 2\max|w| / (2^b - 1)$, $z = 2^{b-1}$
# (a group of zeros gets $s = 2/(2^b-1)$), round $q = \mathrm{clamp}(\lfloor w/s \rceil + z, 0, 2^b - 1)$ and return
# the dequantized weight $s(q - z)$.
# *Hint:* reshape `W` to `(N, K // groupsize, groupsize)` and reduce over the last dimension.

# %%
def rtn_sym_grouped(W: torch.Tensor, bits: int, groupsize: int) -> torch.Tensor:
    # BEGIN SOLUTION
    N, K = W.shape
    maxq = 2**bits - 1
    Wg = W.reshape(N, K // groupsize, groupsize)
    amax = Wg.abs().amax(dim=-1, keepdim=True)
    amax = torch.where(amax == 0, torch.ones_like(amax), amax)
    scale = 2 * amax / maxq
    zero = (maxq + 1) / 2
    q = torch.clamp(torch.round(Wg / scale) + zero, 0, maxq)
    return (scale * (q - zero)).reshape(N, K)
    # END SOLUTION


# %%
from minillm.quant.rtn import rtn_quantize

W = torch.randn(16, 64)
W[3, :32] = 0  # a group of zeros
for bits, groupsize in [(4, 16), (3, 32), (2, 64)]:
    ours = rtn_sym_grouped(W, bits, groupsize)
    assert ours.shape == W.shape
    torch.testing.assert_close(ours, rtn_quantize(W, bits, groupsize, sym=True)[0], atol=1e-6, rtol=0)
print("matches minillm.quant.rtn_quantize(sym=True)")


# %% [markdown]
# ## Exercise 2: the Hessian as a running mean
#
# Calibration data arrives in batches, too many to keep. Write `hessian_update(H, n, x)`: given the Hessian
# $H = \tfrac{2}{n}\sum_t x_t x_t^\top$ of the $n$ rows seen so far and a new batch `x` of shape $(n_i, K)$, return the
# Hessian of all $n + n_i$ rows and the new count. Rescale the old $H$ by $n / (n + n_i)$ before adding the new rows'
# contribution (start: `H = torch.zeros(K, K)`, `n = 0`).

# %%
def hessian_update(H: torch.Tensor, n: int, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    # BEGIN SOLUTION
    x = x.reshape(-1, H.shape[0]).float()
    n_new = n + x.shape[0]
    return H * (n / n_new) + (2.0 / n_new) * x.T @ x, n_new
    # END SOLUTION


# %%
from minillm.quant.hessian import HessianAccumulator

batches = [torch.randn(n, 12) + 1.0 for n in (5, 17, 1, 40)]
H, n = torch.zeros(12, 12), 0
acc = HessianAccumulator(12)
for b in batches:
    H, n = hessian_update(H, n, b)
    acc.add_batch(b)
    torch.testing.assert_close(H, acc.H, atol=1e-5, rtol=1e-5)  # right after every batch, not only at the end
X = torch.cat(batches)
assert n == X.shape[0]
torch.testing.assert_close(H, 2 / X.shape[0] * X.T @ X, atol=1e-5, rtol=1e-5)
print("running mean == 2/n X^T X after every batch")

# %% [markdown]
# ## Exercise 3: act-order is a permutation around plain GPTQ
#
# Act-order quantizes the input columns by decreasing $H_{kk}$. Show that it needs no new algorithm: write
# `gptq_actorder(W, H, bits)` that permutes the columns of `W` and the rows and columns of `H`, calls
# `gptq_quantize(..., actorder=False)`, and undoes the permutation of the result. Use a **stable** descending sort of
# `torch.diag(H)` so ties keep their order (that is what the package does).

# %%
from minillm.quant.gptq import gptq_quantize


def gptq_actorder(W: torch.Tensor, H: torch.Tensor, bits: int) -> torch.Tensor:
    # BEGIN SOLUTION
    perm = torch.argsort(torch.diag(H), descending=True, stable=True)
    Q, _ = gptq_quantize(W[:, perm], H[perm][:, perm], bits)
    return Q[:, torch.argsort(perm)]
    # END SOLUTION


# %%
g = torch.Generator().manual_seed(0)
X = torch.randn(512, 64, generator=g) * torch.exp(2 * torch.randn(64, generator=g))  # a few loud input features
H = 2 / 512 * X.T @ X
W = torch.randn(32, 64, generator=g)
ours = gptq_actorder(W, H, 3)
ref, grid = gptq_quantize(W, H, 3, actorder=True)
assert ((ours - ref).norm() / ref.norm()).item() < 1e-5
# ties: columns 0..31 and 32..63 are copies with equal H_kk, so only a stable sort gives the package's order
Xt = torch.cat([X[:, :32], X[:, :32]], dim=1)
Ht = 2 / 512 * Xt.T @ Xt + 0.1 * torch.eye(64)
torch.testing.assert_close(gptq_actorder(W, Ht, 3), gptq_quantize(W, Ht, 3, actorder=True)[0], atol=1e-5, rtol=0)
print("act-order == permute + plain GPTQ, ties kept in their order")


# %% [markdown]
# ## Exercise 4: pack 4-bit codes into int32 words
#
# Write `pack4(codes)` for integer codes of shape $(K, N)$ with values in $[0, 15]$ and $K$ a multiple of 8: return an
# int32 tensor of shape $(K/8, N)$ in which the code of row $k$ sits in word $\lfloor k/8 \rfloor$ at bits
# $4\,(k \bmod 8)$ .. $4\,(k \bmod 8) + 3$. The top nibble uses the sign bit, so build the words in int64 and map values
# $\ge 2^{31}$ to their two's-complement int32 value ($v - 2^{32}$).

# %%
def pack4(codes: torch.Tensor) -> torch.Tensor:
    # BEGIN SOLUTION
    K, N = codes.shape
    words = torch.zeros(K // 8, N, dtype=torch.int64)
    for j in range(8):
        words |= codes[j::8].long() << (4 * j)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    # END SOLUTION


# %%
from minillm.quant.packing import pack_rows, unpack_rows

codes = torch.randint(0, 16, (64, 10))
packed = pack4(codes)
assert packed.dtype == torch.int32 and packed.shape == (8, 10)
assert torch.equal(packed, pack_rows(codes, 4))
assert torch.equal(unpack_rows(packed, 4), codes)
one = torch.zeros(8, 1, dtype=torch.long)
one[7, 0] = 15
assert pack4(one).item() == -(2**28)  # 0xF0000000 read as a signed int32
print("layout matches minillm.quant.packing")
