r"""The layer-wise objective shared by OBQ and GPTQ, and the Hessian that defines it.

For a linear layer with weight :math:`W` (N, K) fed inputs :math:`X` (K, n), quantization seeks

.. math::

    \hat W = \arg\min_{\hat W \in \text{grid}} \|W X - \hat W X\|_2^2
           = \arg\min \mathrm{tr}\big((W - \hat W)\, H\, (W - \hat W)^\top\big) \cdot \tfrac{n}{2},
    \qquad H = \frac{2}{n} \sum_{t=1}^{n} x_t x_t^\top \quad (K, K).

:class:`HessianAccumulator` builds :math:`H` from a forward hook as a running mean, so calibration
batches of any size and number can stream through a model. :func:`prepare_hessian` applies the two
repairs both solvers need — *dead* input columns (never non-zero, :math:`H_{kk}=0`) and *damping*
:math:`H + \lambda I` with :math:`\lambda` a fraction of the mean diagonal — and
:func:`damped_cholesky` raises a clear error when even the damped :math:`H` is not positive definite.

Defined in chapter 5.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class NotPositiveDefiniteError(ValueError):
    """The (damped) Hessian has no Cholesky factor."""


class HessianAccumulator:
    """Running ``H = 2/n · Σ x xᵀ`` over every input row a layer sees.

    >>> acc = HessianAccumulator(4)
    >>> acc.add_batch(torch.ones(3, 4)); acc.H[0, 0].item()
    2.0
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive int (the layer's input width), got {in_features!r}; "
                             "use HessianAccumulator.attach(layer) to read it from an nn.Linear")
        self.H = torch.zeros(in_features, in_features, device=device)  # (K, K)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        """Fold inputs ``x`` of shape (..., K) into the running mean."""
        K = self.H.shape[0]
        if x.shape[-1] != K:
            raise ValueError(f"inputs have {x.shape[-1]} features but the accumulator expects K={K}")
        x = x.detach().reshape(-1, K).float()  # (n_new, K)
        if not torch.isfinite(x).all():
            raise ValueError("the calibration inputs contain NaN or inf: the model overflowed on them; run "
                             "calibration in float32 (model.float()) and check the batches")
        n_new = x.shape[0]
        self.H *= self.n / (self.n + n_new)  # re-weight the old mean before adding new samples
        self.n += n_new
        x = (2.0 / self.n) ** 0.5 * x
        self.H += x.T @ x

    def hook(self, module: nn.Module, inputs: tuple, output) -> None:
        """A ``register_forward_hook`` callback: accumulate the module's first input."""
        self.add_batch(inputs[0])

    @classmethod
    def attach(cls, module: nn.Module) -> tuple["HessianAccumulator", torch.utils.hooks.RemovableHandle]:
        """Start accumulating the inputs of ``module`` (an ``nn.Linear``); remove the handle when done."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"Hessians are collected for nn.Linear layers, got {type(module).__name__}; "
                            "quantize the linear layers inside it instead")
        acc = cls(module.in_features, module.weight.device)
        return acc, module.register_forward_hook(acc.hook)


def layer_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """The objective ``tr((W − Q) H (W − Q)ᵀ)`` for W, Q (N, K) and H (K, K)."""
    if W.dim() != 2 or W.shape != Q.shape or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"need W and Q of one shape (N, K) and H (K, K); got {tuple(W.shape)}, "
                         f"{tuple(Q.shape)}, {tuple(H.shape)}: pass the layer's weight, its quantized copy and "
                         "the Hessian of its inputs")
    D = (W - Q).double()  # float64: the trace sums many small terms
    return float(((D @ H.double()) * D).sum())


def prepare_hessian(W: torch.Tensor, H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of W (N, K) and H (K, K) with dead columns fixed and damping added.

    A dead column (H_kk = 0: the input is always zero) gets H_kk = 1 and weight 0 — any value is
    exact there, and the 1 keeps H invertible. Damping adds ``percdamp · mean(diag H)`` to the diagonal.
    """
    if not isinstance(H, torch.Tensor) or not H.is_floating_point():
        raise TypeError(f"H must be a floating (K, K) torch.Tensor, got {getattr(H, 'dtype', type(H).__name__)}; "
                        "collect it with HessianAccumulator")
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"H must be (K, K) for a weight of shape (N, K) = {tuple(W.shape)}; got {tuple(H.shape)}. "
                         "Collect H from the inputs of this very layer (HessianAccumulator).")
    if not torch.isfinite(W).all():
        raise ValueError("the weight contains NaN or inf: no grid can hold them; fix the model (reload the "
                         "checkpoint) before quantizing")
    if not torch.isfinite(H).all():
        raise NotPositiveDefiniteError("the Hessian contains NaN or inf: the calibration inputs overflowed; "
                                       "run calibration in float32 and check the inputs")
    if percdamp < 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    W, H = W.detach().clone().float(), H.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    return W, H


def damped_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Lower Cholesky factor L of the (already damped) H, or a clear error naming the fix."""
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise NotPositiveDefiniteError(
            f"the damped Hessian (percdamp={percdamp}) is not positive definite (leading minor {int(info)} fails). "
            "Fix: increase percdamp (e.g. 0.1), or calibrate with more data — at least as many input rows "
            "(tokens) as the layer has input features.")
    return L


def inverse_hessian(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """H⁻¹ (K, K) of an already damped H via its Cholesky factor."""
    return torch.cholesky_inverse(damped_cholesky(H, percdamp))
