r"""Why a low-rank update can be enough, measured: the spectrum of a full fine-tune's weight change.

For each weight matrix, full fine-tuning moves :math:`W_0` to :math:`W_0 + \Delta W`. With the singular values
:math:`\sigma_1 \ge \sigma_2 \ge \dots` of :math:`\Delta W`, the share of its energy (squared Frobenius norm) that
the best rank-:math:`r` approximation keeps is (Eckart–Young)

.. math::

    E_r(\Delta W) = \frac{\sum_{i \le r} \sigma_i^2}{\sum_i \sigma_i^2} ,

against :math:`E_r \approx r / \min(d_{out}, d_{in})` for an update with no structure (a random matrix spreads its
energy evenly). The overlap of two updates' top-:math:`k` column spaces :math:`U_k, U'_k` is

.. math::

    \mathrm{overlap}_k = \frac{\lVert U_k^\top U'_k \rVert_F^2}{k} \in [0, 1],

1 for the same subspace and about :math:`k / d_{out}` for unrelated ones; applied to the full fine-tune's update
and LoRA's learned :math:`sBA`, it says whether LoRA found the directions full fine-tuning used.
:func:`truncate_updates` replaces every full update by its best rank-:math:`r` part, so one can measure how much
of the *task* that part carries.

Defined in chapter 3.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from minillm.lora.layers import LoRALayer, LoRALinear


def _check_matrix(delta: torch.Tensor, name: str = "delta") -> torch.Tensor:
    if not isinstance(delta, torch.Tensor) or delta.dim() != 2:
        raise ValueError(f"{name} must be a 2-D weight update (d_out, d_in), got "
                         f"{tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__}")
    if not torch.isfinite(delta).all():
        raise ValueError(f"{name} holds NaN or inf: the run that produced it diverged; rerun it at a lower learning rate")
    return delta.detach().double()


def energy_captured(delta: torch.Tensor, r: int) -> float:
    """:math:`E_r`: the share of ``delta``'s squared Frobenius norm in its top ``r`` singular directions."""
    if r < 1:
        raise ValueError(f"rank r must be at least 1, got {r}")
    s2 = torch.linalg.svdvals(_check_matrix(delta)).square()
    total = float(s2.sum())
    if total == 0.0:
        raise ValueError("the update is exactly zero (the layer did not change): there is no spectrum to measure")
    return float(s2[:r].sum()) / total


def top_singular_vectors(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U_k, V_k)``: the top-``k`` left (d_out, k) and right (d_in, k) singular vectors of ``delta``."""
    d = _check_matrix(delta)
    if not 1 <= k <= min(d.shape):
        raise ValueError(f"k must be in [1, {min(d.shape)}] for a {tuple(d.shape)} update, got {k}")
    U, _, Vh = torch.linalg.svd(d, full_matrices=False)
    return U[:, :k], Vh[:k].T


def subspace_overlap(delta_a: torch.Tensor, delta_b: torch.Tensor, k: int, side: str = "left") -> float:
    """:math:`\\lVert U_k^\\top U'_k\\rVert_F^2 / k` of the top-``k`` left (output) or right (input) singular vectors."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' (output space) or 'right' (input space), got {side!r}")
    if tuple(delta_a.shape) != tuple(delta_b.shape):
        raise ValueError(f"the two updates have shapes {tuple(delta_a.shape)} and {tuple(delta_b.shape)}: "
                         f"compare the same layer")
    which = 0 if side == "left" else 1
    return overlap(top_singular_vectors(delta_a, k)[which], top_singular_vectors(delta_b, k)[which])


def overlap(basis_a: torch.Tensor, basis_b: torch.Tensor) -> float:
    """:math:`\\lVert Q_a^\\top Q_b\\rVert_F^2 / k` for two orthonormal bases of ``k`` columns each."""
    if basis_a.shape != basis_b.shape:
        raise ValueError(f"the bases have shapes {tuple(basis_a.shape)} and {tuple(basis_b.shape)}; "
                         f"take the same k of the same layer")
    return float((basis_a.T.double() @ basis_b.double()).square().sum()) / basis_a.shape[1]


def weight_updates(tuned: nn.Module, base: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """``ΔW = W_tuned - W_base`` for the named linear layers (LoRA layers give their merged-equivalent update)."""
    updates = {}
    modules = dict(tuned.named_modules())
    for name in names:
        if name not in modules:
            raise ValueError(f"the model has no module {name!r}; pass the names inject_lora returned, or those of "
                             f"its nn.Linear layers")
        t, b = tuned.get_submodule(name), base.get_submodule(name)
        b = b.base_layer if isinstance(b, LoRALayer) else b
        if isinstance(t, LoRALayer):
            if t.merged:
                raise ValueError(f"{name} has its adapter merged; call unmerge_lora(model) before measuring its update")
            updates[name] = t.delta_weight(t.active_adapter).detach().clone()
        else:
            updates[name] = (t.weight - b.weight).detach().clone()
    return updates


@dataclass(frozen=True)
class SpectrumReport:
    """Per layer: the update's shape, :math:`E_r` and the no-structure baseline :math:`r / \\min(d)`."""

    names: list[str]
    shapes: list[tuple[int, int]]
    energy: list[float]
    baseline: list[float]
    r: int

    @property
    def mean_energy(self) -> float:
        return sum(self.energy) / len(self.energy)

    @property
    def mean_baseline(self) -> float:
        return sum(self.baseline) / len(self.baseline)


def spectrum_report(updates: dict[str, torch.Tensor], r: int) -> SpectrumReport:
    """:func:`energy_captured` of every update, with the baseline an unstructured update would give."""
    if not updates:
        raise ValueError("no updates to measure: pass the names of the adapted linear layers")
    names = list(updates)
    return SpectrumReport(names, [tuple(updates[n].shape) for n in names],
                          [energy_captured(updates[n], r) for n in names],
                          [min(r, min(updates[n].shape)) / min(updates[n].shape) for n in names], r)


@torch.no_grad()
def truncate_updates(tuned: nn.Module, base: nn.Module, names: list[str], r: int) -> nn.Module:
    """A copy of ``tuned`` whose named weights are :math:`W_0 + \\mathrm{SVD}_r(\\Delta W)`; everything else as tuned."""
    if r < 1:
        raise ValueError(f"rank r must be at least 1, got {r}")
    out = copy.deepcopy(tuned)
    for name, delta in weight_updates(tuned, base, names).items():
        layer = out.get_submodule(name)
        if isinstance(layer, LoRALinear):
            raise TypeError(f"{name} is a LoRA layer: its update already has rank <= r; truncate a full fine-tune")
        U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
        low = (U[:, :r] * S[:r]) @ Vh[:r]  # (d_out, d_in): the best rank-r approximation
        b = base.get_submodule(name)
        b = b.base_layer if isinstance(b, LoRALayer) else b
        layer.weight.copy_(b.weight + low.to(layer.weight.dtype))
    return out
