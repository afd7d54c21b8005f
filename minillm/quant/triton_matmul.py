r"""A Triton kernel for ``y = x @ dequant(Wq)`` straight from packed low-bit weights.

Each program owns a (BLOCK_M, BLOCK_N) tile of ``y`` and walks K in BLOCK_K steps; for every step it
loads packed words and unpacks them in registers,

.. math::

    \hat W_{kn} = s_{g(k),n}\,\big((\mathrm{qweight}_{k/p,\,n} \gg (k \bmod p)\,b)\ \&\ (2^b-1) - z_{g(k),n}\big),

so the weight crosses memory at ``b`` bits instead of 16 — the whole point at decode time (M = 1),
where a matvec is bound by memory bandwidth. Scales and zero points are gathered through ``g_idx``,
so act-order layers need no reordering. M = 1 uses a broadcast-multiply-reduce (``tl.dot`` needs
M ≥ 16); larger M uses ``tl.dot``. ``split_k`` > 1 splits K over programs that ``atomic_add`` their
partial sums (more parallelism for a skinny matvec on a big GPU).

Triton is optional (Linux only). On a CPU the kernel runs in Triton's interpreter, which must be
switched on **before this module is imported**: ``os.environ["TRITON_INTERPRET"] = "1"``.
:func:`quant_matmul_torch` is the pure-torch reference.

Defined in chapter 5.
"""

from __future__ import annotations

import os

import torch

from minillm.quant.packing import PackedWeight, codes_per_word

try:  # optional dependency: `pip install triton==3.7.1` (Linux)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # read once: @triton.jit decided at import time


def triton_available() -> bool:
    return triton is not None


def can_run(device: torch.device | str) -> bool:
    """Whether the kernel can run on ``device``: a CUDA GPU, or the CPU under the interpreter."""
    return triton is not None and (torch.device(device).type == "cuda" or INTERPRETED)


if triton is not None:

    @triton.jit
    def _dequant_tile(qw_ptr, s_ptr, z_ptr, g_ptr, offs_k, offs_n, mask_k, mask_n, N, stride_z,
                      BITS: tl.constexpr, PER: tl.constexpr, MASK: tl.constexpr):
        """(BLOCK_K, BLOCK_N) float32 weights from packed words, scales and zeros."""
        mask = mask_k[:, None] & mask_n[None, :]
        words = tl.load(qw_ptr + (offs_k // PER)[:, None] * N + offs_n[None, :], mask=mask, other=0)
        q = (words >> ((offs_k % PER) * BITS)[:, None]) & MASK  # (BK, BN) codes
        g = tl.load(g_ptr + offs_k, mask=mask_k, other=0)  # (BK,) group of each input row
        s = tl.load(s_ptr + g[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
        zw = tl.load(z_ptr + g[:, None] * stride_z + (offs_n // PER)[None, :], mask=mask, other=0)
        z = (zw >> ((offs_n % PER) * BITS)[None, :]) & MASK
        return (q - z).to(tl.float32) * s.to(tl.float32)

    @triton.jit
    def _quant_matmul_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, y_ptr, M, N, K, stride_xm, stride_ym, stride_z,
                             BITS: tl.constexpr, PER: tl.constexpr, MASK: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             SPLIT_K: tl.constexpr, USE_DOT: tl.constexpr):
        pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m, mask_n = offs_m < M, offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # (BM, BK)
            w = _dequant_tile(qw_ptr, s_ptr, z_ptr, g_ptr, offs_k, offs_n, mask_k, mask_n, N, stride_z,
                              BITS, PER, MASK)  # (BK, BN)
            if USE_DOT:
                acc += tl.dot(x, w.to(x.dtype))
            else:  # matvec: broadcast-multiply-reduce over K
                acc += tl.sum(x.to(tl.float32)[:, :, None] * w[None, :, :], axis=1)
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        mask_y = mask_m[:, None] & mask_n[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptrs, acc, mask=mask_y)
        else:
            tl.atomic_add(y_ptrs, acc, mask=mask_y)


def quant_matmul(x: torch.Tensor, w: PackedWeight, block_n: int = 128, block_k: int = 128, split_k: int = 1,
                 block_m: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """``x`` (..., K) @ dequant(``w``) (K, N) -> (..., N) in ``x``'s dtype, accumulated in float32.

    Raises:
        ImportError: Triton is not installed (``pip install triton==3.7.1``, Linux), use :func:`quant_matmul_torch`.
        RuntimeError: CPU tensors without ``TRITON_INTERPRET=1`` set before import.
        ValueError: shape or device mismatch.
    """
    if triton is None:
        raise ImportError("quant_matmul needs Triton: `pip install triton==3.7.1` (Linux only); "
                          "or call minillm.quant.triton_matmul.quant_matmul_torch, the pure-torch fallback")
    if not can_run(x.device):
        raise RuntimeError("Triton kernels need a CUDA GPU; on a CPU set os.environ['TRITON_INTERPRET'] = '1' "
                           "BEFORE importing minillm.quant.triton_matmul (e.g. first thing in the notebook or conftest.py)")
    K, N = w.in_features, w.out_features
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features, the packed weight expects K={K}")
    if x.device != w.qweight.device:
        raise ValueError(f"x is on {x.device} but the packed weight is on {w.qweight.device}; move one with .to()")
    x2 = x.reshape(-1, K).contiguous()  # (M, K)
    M = x2.shape[0]
    use_dot = M > 1
    block_m = block_m or (1 if not use_dot else (16 if M <= 16 else 64))
    y = (torch.zeros if split_k > 1 else torch.empty)(M, N, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n), split_k)
    per = codes_per_word(w.bits)
    try:
        _quant_matmul_kernel[grid](x2, w.qweight, w.scales, w.qzeros, w.g_idx, y, M, N, K, x2.stride(0), y.stride(0),
                                   w.qzeros.stride(0), BITS=w.bits, PER=per, MASK=2**w.bits - 1, BLOCK_M=block_m,
                                   BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, USE_DOT=use_dot,
                                   num_warps=num_warps)
    except Exception as err:
        if INTERPRETED and "outside of the scope of a kernel" in str(err):
            raise RuntimeError("Triton was imported before TRITON_INTERPRET=1 was set (torch imports it lazily, e.g. "
                               "at the first optimizer step), so the interpreter cannot run. Set the variable first "
                               "thing in the program (top of the notebook or conftest.py) and restart.") from err
        raise
    return y.to(x.dtype).reshape(*x.shape[:-1], N)


def quant_matmul_torch(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """Pure-torch fallback and reference: dequantize the whole weight, then one matmul."""
    return x @ w.dequantize().to(x.dtype)
