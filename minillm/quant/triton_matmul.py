r"""Triton kernels for ``y = x @ dequant(Wq)`` straight from packed low-bit weights.

Both kernels read the regrouped layout of :mod:`minillm.quant.kernel_layout`: rows sorted by group, so a tile of
``BLOCK_K`` rows lies in one group and needs **one** scale and zero vector. Inside a group the sum factorises,

.. math::

    y_n = \sum_g s_{gn} \sum_{r \in g} x_{\pi(r)}\,(q_{rn} - z_{gn}),

so the inner loop works on small exact integers ``q − z`` and the scale multiplies once per group.

* **M = 1 (decode)** — ``_gemv_kernel``: a matvec is bound by memory bandwidth, so it must spend few
  instructions per weight. Each program keeps a (BLOCK_K/32, BLOCK_N) accumulator: one row per 32-row block
  of codes, and for each of the 32 code slots of a block it adds ``x·(q − z)``. A code is turned into a float
  without an integer-to-float conversion: OR-ing it (left in place at bit ``p``, below bit 23) into the
  mantissa of 2²³ gives the float 2²³ + q·2ᵖ exactly, one subtraction of 2²³ + z·2ᵖ leaves (q − z)·2ᵖ, and
  ``x`` is pre-scaled by 2⁻ᵖ. Codes in the top half of a word are read from ``word >> 16``. Per weight that is
  about three instructions (AND-OR, subtract, multiply-add; ``tests/quant/test_quant_kernel_compile.py`` reads
  the sm_90 machine code).
* **M > 1** — ``_gemm_kernel``: unpacks a (BLOCK_K, BLOCK_N) tile of ``q − z`` and uses ``tl.dot`` (tensor
  cores; fp32 inputs run as TF32 on a GPU).
* ``split_k`` > 1 splits the K tiles over programs that ``atomic_add`` their partial sums into a float32 buffer:
  more programs for a skinny matvec on a big GPU.

3-bit codes straddle words (rows 10 and 21 of every 32); both kernels read the straddling bits from two words.

Triton is optional (Linux only). On a CPU the kernels run in Triton's interpreter, which must be switched on
**before this module is imported**: ``os.environ["TRITON_INTERPRET"] = "1"``. :func:`quant_matmul_torch` is the
pure-torch reference. The configurations a GPU run should try are :data:`GEMV_CONFIGS` and :data:`GEMM_CONFIGS`.

Defined in chapter 5.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from minillm.quant.kernel_layout import ROW_BLOCK, KernelWeight
from minillm.quant.packing import PackedWeight

try:  # optional dependency: `pip install triton==3.7.1` (Linux)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

MAGIC = 0x4B000000  # the bits of the float 2²³; a kernel argument, so AND and OR fuse into one instruction
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # read once: @triton.jit decided at import time


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes, K split, warps (``block_m``: M > 1 only); ``pregather``: permute x with one ``index_select``
    before the launch instead of gathering it in the kernel (fewer instructions per weight, one more kernel)."""

    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    block_m: int = 16
    pregather: bool = False


#: Configurations the GPU benchmark tries for M = 1 (``block_k`` is lowered to divide the group size): tiles of
#: 64-256 columns, K split 1-8 ways so that a 4096-11008-column layer gives the GPU's 100+ SMs a few programs
#: each, in-kernel or pre-gathered x. The benchmark's dry run tries the first two.
GEMV_CONFIGS = (KernelConfig(128, 128, 1, 4), KernelConfig(128, 128, 4, 4, pregather=True),
                KernelConfig(64, 128, 2, 4), KernelConfig(128, 128, 2, 4), KernelConfig(128, 128, 4, 4),
                KernelConfig(64, 128, 4, 2), KernelConfig(64, 128, 4, 2, pregather=True), KernelConfig(256, 128, 8, 8))
#: ... and for M > 1 (``tl.dot`` tiles of 16 rows).
GEMM_CONFIGS = (KernelConfig(64, 128, 1, 4, 16), KernelConfig(128, 64, 2, 4, 16, pregather=True),
                KernelConfig(128, 128, 1, 4, 16), KernelConfig(64, 128, 4, 4, 16), KernelConfig(128, 128, 4, 8, 16),
                KernelConfig(256, 64, 4, 8, 16))


def triton_available() -> bool:
    return triton is not None


def can_run(device: torch.device | str) -> bool:
    """Whether the kernel can run on ``device``: a CUDA GPU, or the CPU under the interpreter."""
    return triton is not None and (torch.device(device).type == "cuda" or INTERPRETED)


if triton is not None:

    @triton.jit
    def _tile_range(pid_k, TILES, TPG, TPS):
        """Tiles [t_begin, t_end) of this K split, and the groups [g_begin, g_end) they touch."""
        t_begin = pid_k * TPS
        t_end = tl.minimum(t_begin + TPS, TILES)
        return t_begin, t_end, t_begin // TPG, (t_end + TPG - 1) // TPG

    @triton.jit
    def _add_code(acc, word, hi, prev, z, magic, x_ptr, idx_ptr, rows, R: tl.constexpr, W: tl.constexpr,
                  BITS: tl.constexpr, HAS_IDX: tl.constexpr):
        """acc + x·(q − z) for code R of each 32-row block (stream bits R·BITS ...) if it ends in word W.

        ``word`` is word W of each block, ``hi`` = word >> 16, ``prev`` = word W − 1. The code becomes a float
        without an integer conversion: m = 2²³ + q·2ᴾ has the bits of the code OR-ed into the mantissa of 2²³.
        """
        MASK: tl.constexpr = (1 << BITS) - 1
        START: tl.constexpr = (R * BITS) // 32  # word where the code starts
        OFFSET: tl.constexpr = (R * BITS) % 32  # its first bit there
        if R >= 0 and R < 32 and ((START == W and OFFSET + BITS <= 32) or (START == W - 1 and OFFSET + BITS > 32)):
            if START == W and OFFSET + BITS <= 23:  # low bits of the word: mask in place
                P: tl.constexpr = OFFSET
                m = (word & (MASK << P)) | magic
            elif START == W and OFFSET + BITS <= 32:  # high bits: from word >> 16
                P: tl.constexpr = OFFSET - 16
                m = (hi & (MASK << P)) | magic
            else:  # 3 bits straddling words W − 1 and W
                P: tl.constexpr = 0
                LOW: tl.constexpr = 32 - OFFSET  # bits of the code in the previous word
                m = ((prev >> OFFSET) & ((1 << LOW) - 1)) | ((word & ((1 << (BITS - LOW)) - 1)) << LOW) | magic
            d = m.to(tl.float32, bitcast=True) - (z * (1 << P) + 8388608.0)  # (BLOCKS, BN) = (q − z)·2ᴾ, exact
            if HAS_IDX:  # x at the input rows of these kernel rows
                xv = tl.load(x_ptr + tl.load(idx_ptr + rows + R))
            else:
                xv = tl.load(x_ptr + rows + R)
            acc = acc + (xv.to(tl.float32) * (1.0 / (1 << P)))[:, None] * d
        return acc

    # Loop counts are not specialised on, so one compiled kernel serves every layer shape (fewer compilations).
    @triton.jit(do_not_specialize=["TILES", "TPG", "TPS"])
    def _gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, idx_ptr, y_ptr, N, stride_qw, TILES, TPG, TPS, magic,
                     BITS: tl.constexpr, HAS_IDX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     SPLIT_K: tl.constexpr):
        BLOCKS: tl.constexpr = BLOCK_K // 32  # 32-row blocks per tile; block i holds BITS words per column
        pid_n, pid_k = tl.program_id(0), tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        offs_b = tl.arange(0, BLOCKS)
        acc = tl.zeros((BLOCKS, BLOCK_N), dtype=tl.float32)
        t_begin, t_end, g_begin, g_end = _tile_range(pid_k, TILES, TPG, TPS)
        for g in range(g_begin, g_end):
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]  # one load per group
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0).to(tl.float32)[None, :]
            acc_g = tl.zeros((BLOCKS, BLOCK_N), dtype=tl.float32)
            for t in range(tl.maximum(t_begin, g * TPG), tl.minimum(t_end, g * TPG + TPG)):
                rows = (t * BLOCKS + offs_b) * 32  # (BLOCKS,) first kernel row of each block
                words = (t * BLOCKS + offs_b) * BITS  # (BLOCKS,) first word row of each block
                prev = tl.zeros((BLOCKS, BLOCK_N), dtype=tl.int32)
                for w in tl.static_range(BITS):
                    word = tl.load(qw_ptr + (words + w)[:, None] * stride_qw + offs_n[None, :],
                                   mask=mask_n[None, :], other=0)  # (BLOCKS, BN) int32
                    hi = word >> 16
                    for j in tl.static_range(32 // BITS + 2):  # the codes that end in word w
                        acc_g = _add_code(acc_g, word, hi, prev, z, magic, x_ptr, idx_ptr, rows,
                                          (32 * w + BITS - 1) // BITS - 1 + j, w, BITS, HAS_IDX)
                    prev = word
            acc += acc_g * s
        y = tl.sum(acc, axis=0)  # (BN,)
        if SPLIT_K == 1:
            tl.store(y_ptr + offs_n, y, mask=mask_n)
        else:
            tl.atomic_add(y_ptr + offs_n, y, mask=mask_n)

    @triton.jit
    def _minus_zero(q, z, magic, DTYPE: tl.constexpr):
        """(BK, BN) codes minus (BN,) zero points as exact small numbers in DTYPE, without integer conversions."""
        if DTYPE == tl.float16:  # the bits of fp16 1024 + q are 0x6400 | q (q < 1024)
            h = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
            return h - (z + 1024).to(tl.float16)[None, :]
        else:
            f = (q | magic).to(tl.float32, bitcast=True) - (z.to(tl.float32) + 8388608.0)[None, :]
            return f.to(DTYPE)

    @triton.jit(do_not_specialize=["TILES", "TPG", "TPS"])
    def _gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, idx_ptr, y_ptr, M, N, stride_xm, stride_ym, stride_qw,
                     TILES, TPG, TPS, magic, BITS: tl.constexpr, HAS_IDX: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
        MASK: tl.constexpr = (1 << BITS) - 1
        pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m, mask_n = offs_m < M, offs_n < N
        bit = offs_k * BITS
        wrow, shift = bit // 32, bit % 32  # (BK,) word row and bit offset of each tile row
        straddle = shift + BITS > 32
        low_mask = tl.where(straddle, (1 << ((32 - shift) & 31)) - 1, MASK)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        t_begin, t_end, g_begin, g_end = _tile_range(pid_k, TILES, TPG, TPS)
        for g in range(g_begin, g_end):
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0).to(tl.int32)
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for t in range(tl.maximum(t_begin, g * TPG), tl.minimum(t_end, g * TPG + TPG)):
                rows = t * BLOCK_K + offs_k
                if HAS_IDX:
                    src = tl.load(idx_ptr + rows)
                else:
                    src = rows
                x = tl.load(x_ptr + offs_m[:, None] * stride_xm + src[None, :], mask=mask_m[:, None], other=0.0)
                if 32 % BITS == 0:  # load each word once, unpack its 32/BITS codes in registers
                    offs_w = t * (BLOCK_K * BITS // 32) + tl.arange(0, BLOCK_K * BITS // 32)
                    words = tl.load(qw_ptr + offs_w[:, None] * stride_qw + offs_n[None, :], mask=mask_n[None, :],
                                    other=0)  # (BK·BITS/32, BN)
                    slot_shift = tl.arange(0, 32 // BITS) * BITS
                    q = tl.reshape((words[:, None, :] >> slot_shift[None, :, None]) & MASK, (BLOCK_K, BLOCK_N))
                else:  # 3 bits: a word per row (cached), plus the next word for the two straddling rows of 32
                    w_ptrs = qw_ptr + (t * (BLOCK_K * BITS // 32) + wrow)[:, None] * stride_qw + offs_n[None, :]
                    q = (tl.load(w_ptrs, mask=mask_n[None, :], other=0) >> shift[:, None]) & low_mask[:, None]
                    nxt = tl.load(w_ptrs + stride_qw, mask=straddle[:, None] & mask_n[None, :], other=0)
                    q = (q | (nxt << ((32 - shift) & 31)[:, None])) & MASK
                acc_g += tl.dot(x, _minus_zero(q, z, magic, x.dtype))
            acc += acc_g * s[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        mask_y = mask_m[:, None] & mask_n[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptrs, acc, mask=mask_y)
        else:
            tl.atomic_add(y_ptrs, acc, mask=mask_y)


def _pick_block_k(block_k: int, group_rows: int) -> int:
    """The largest power of two ≤ ``block_k`` (and ≥ 32) that divides the group size, so tiles never cross a group."""
    bk = max(ROW_BLOCK, 1 << (max(block_k, 1).bit_length() - 1))
    while group_rows % bk:
        bk //= 2
    return bk


def default_config(M: int, w: KernelWeight, device: torch.device) -> KernelConfig:
    """A reasonable launch without a sweep: enough programs to fill the GPU at M = 1 (a guess until measured)."""
    if M == 1:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        split = 1
        while split < 8 and triton.cdiv(w.out_features, 128) * split < 2 * sms:
            split *= 2
        return KernelConfig(128, 128, split, 4)
    return KernelConfig(128 if w.out_features >= 4096 else 64, 128, 1, 4, 16 if M <= 16 else (32 if M <= 32 else 64))


def quant_matmul(x: torch.Tensor, w: PackedWeight | KernelWeight, block_n: int | None = None,
                 block_k: int | None = None, split_k: int | None = None, block_m: int | None = None,
                 num_warps: int | None = None, config: KernelConfig | None = None) -> torch.Tensor:
    """``x`` (..., K) @ dequant(``w``) (K, N) -> (..., N) in ``x``'s dtype, accumulated in float32.

    Pass ``w.for_kernel()`` (a :class:`KernelWeight`, prepared once) on a hot path; a :class:`PackedWeight` is
    regrouped on every call. Launch settings: ``config``, or the single keywords, else :func:`default_config`.

    Raises ImportError without Triton, RuntimeError on a CPU without ``TRITON_INTERPRET=1`` set before import,
    ValueError / TypeError on a shape, dtype or device mismatch or bad launch settings.
    """
    if triton is None:
        raise ImportError("quant_matmul needs Triton: `pip install triton==3.7.1` (Linux only); or call "
                          "minillm.quant.triton_matmul.quant_matmul_torch, the pure-torch fallback")
    if isinstance(w, PackedWeight):
        w = w.for_kernel()
    if not isinstance(w, KernelWeight):
        raise TypeError(f"w must be a PackedWeight or KernelWeight, got {type(w).__name__}; pack it with pack_weight")
    if not can_run(x.device):
        raise RuntimeError("Triton kernels need a CUDA GPU; on a CPU set os.environ['TRITON_INTERPRET'] = '1' "
                           "BEFORE importing minillm.quant.triton_matmul (e.g. first thing in the notebook or conftest.py)")
    K, N = w.in_features, w.out_features
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features, the packed weight expects K={K}")
    if x.device != w.device:
        raise ValueError(f"x is on {x.device} but the packed weight is on {w.device}; move one with .to()")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}; convert it with x.to(torch.float16)")
    x2 = x.reshape(-1, K).contiguous()  # (M, K)
    M = x2.shape[0]
    if M == 0:
        return x.new_zeros(*x.shape[:-1], N)
    cfg = config or default_config(M, w, x.device)
    bn, bk = block_n or cfg.block_n, _pick_block_k(block_k or cfg.block_k, w.group_rows)
    sk, bm, nw = split_k or cfg.split_k, block_m or cfg.block_m, num_warps or cfg.num_warps
    if min(bn, sk, bm, nw) < 1 or bn & (bn - 1) or bm & (bm - 1) or (M > 1 and bm < 16):
        raise ValueError(f"block_n={bn} and block_m={bm} must be powers of two (block_m ≥ 16 for M > 1), "
                         f"split_k={sk} and num_warps={nw} positive")
    tiles, tpg = w.qweight.shape[0] * 32 // (w.bits * bk), w.group_rows // bk
    tps = triton.cdiv(tiles, sk)
    y = (torch.zeros(M, N, device=x.device, dtype=torch.float32) if sk > 1
         else torch.empty(M, N, device=x.device, dtype=x.dtype))
    idx = w.row_index
    if idx is not None and cfg.pregather:
        x2, idx = x2.index_select(1, idx), None  # (M, Kp) in kernel-row order
    common = dict(BITS=w.bits, HAS_IDX=idx is not None, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=nw)
    idx = idx if idx is not None else w.qweight  # any pointer when HAS_IDX is False
    try:
        if M == 1:
            _gemv_kernel[(triton.cdiv(N, bn), sk)](x2, w.qweight, w.scales, w.zeros, idx, y, N, w.qweight.stride(0),
                                                   tiles, tpg, tps, MAGIC, **common)
        else:
            grid = (triton.cdiv(N, bn), triton.cdiv(M, bm), sk)
            _gemm_kernel[grid](x2, w.qweight, w.scales, w.zeros, idx, y, M, N, x2.stride(0), y.stride(0),
                               w.qweight.stride(0), tiles, tpg, tps, MAGIC, BLOCK_M=bm, **common)
    except Exception as err:
        if INTERPRETED and "outside of the scope of a kernel" in str(err):
            raise RuntimeError("Triton was imported before TRITON_INTERPRET=1 was set (torch imports it lazily, e.g. "
                               "at the first optimizer step), so the interpreter cannot run. Set the variable first "
                               "thing in the program (top of the notebook or conftest.py) and restart.") from err
        raise
    return y.to(x.dtype).reshape(*x.shape[:-1], N)


def quant_matmul_torch(x: torch.Tensor, w: PackedWeight | KernelWeight) -> torch.Tensor:
    """Pure-torch fallback and reference: dequantize the whole weight, then one matmul."""
    return x @ w.dequantize().to(x.dtype)
