r"""Experts: one MLP as makeMoE writes it, and E of them stored as stacked weights (``ExpertBank``).

Each expert is the transformer's position-wise MLP with a nonlinearity :math:`\phi` (makeMoE: ReLU; chapter 1's
GPT: GELU),

.. math::

    \mathrm{FFN}_e(x) = W^{(2)}_e\,\phi(W^{(1)}_e x + b^{(1)}_e) + b^{(2)}_e,
    \qquad W^{(1)}_e \in \mathbb{R}^{H \times C},\ W^{(2)}_e \in \mathbb{R}^{C \times H}.

makeMoE keeps E separate ``Expert`` modules in an ``nn.ModuleList``. Production MoE code stores the same
numbers as *stacked* tensors — ``w1`` of shape (E, H, C), ``w2`` of shape (E, C, H) — so that all experts can
run in **one** batched matrix product over a padded (E, slots, C) buffer of their tokens
(:func:`minillm.moe.dispatch.dispatch_batched`). :class:`ExpertBank` is that storage. It still behaves like a
sequence of experts (``bank[e](x)``, ``len(bank)``, iteration), so the per-expert dispatches run on it
unchanged, and it loads makeMoE-style state dicts (``experts.{e}.fc1.weight`` ...) by stacking them.

Defined in chapter 2.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

ActivationName = Literal["relu", "gelu"]
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP nonlinearity called ``name``: ``"relu"`` (makeMoE) or ``"gelu"`` (chapter 1's GPT)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}; "
                         "makeMoE uses 'relu', chapter 1's GPT 'gelu'")
    return ACTIVATIONS[name]


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Expert(nn.Module):
    """One expert: the transformer MLP of makeMoE, C -> hidden -> activation -> C, then dropout."""

    def __init__(self, n_embd: int, hidden: int, dropout: float = 0.0, bias: bool = True,
                 activation: ActivationName = "relu"):
        super().__init__()
        _check_sizes(n_embd=n_embd, hidden=hidden)
        self.act = activation_fn(activation)
        self.activation = activation
        self.fc1 = nn.Linear(n_embd, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))  # (..., C)


class _BankedExpert:
    """Expert ``e`` of a bank, callable like an :class:`Expert` (its weights are views into the bank's)."""

    def __init__(self, bank: "ExpertBank", e: int):
        self.bank, self.e = bank, e

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, e = self.bank, self.e
        h = b.act(F.linear(x, b.w1[e], b.b1[e]))  # (n, H)
        return b.dropout(F.linear(h, b.w2[e], b.b2[e]))  # (n, C)


class ExpertBank(nn.Module):
    r"""E experts stored stacked: ``w1`` (E, H, C), ``b1`` (E, H), ``w2`` (E, C, H), ``b2`` (E, C).

    The layout of ``w1[e]``/``w2[e]`` is ``nn.Linear``'s (out, in), so ``bank[e]`` computes exactly what an
    :class:`Expert` with ``fc1.weight = w1[e]`` and ``fc2.weight = w2[e]`` computes. Initialised like
    ``nn.Linear`` (uniform in :math:`\pm 1/\sqrt{\text{fan\_in}}`), expert by expert.
    """

    def __init__(self, n_experts: int, n_embd: int, hidden: int, dropout: float = 0.0,
                 activation: ActivationName = "relu"):
        super().__init__()
        _check_sizes(n_experts=n_experts, n_embd=n_embd, hidden=hidden)
        self.act = activation_fn(activation)
        self.activation = activation
        self.n_experts, self.n_embd, self.hidden = n_experts, n_embd, hidden
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden, n_embd))
        self.b1 = nn.Parameter(torch.empty(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, n_embd, hidden))
        self.b2 = nn.Parameter(torch.empty(n_experts, n_embd))
        self.dropout = nn.Dropout(dropout)
        # expert ids 0..E-1, kept so that a dispatch does not build them at every call (moves with .to())
        self.register_buffer("expert_ids", torch.arange(n_experts), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init: weights and biases uniform in ±1/sqrt(fan_in).

        Drawn in the order E separate experts would draw them (fc1 weight, fc1 bias, fc2 weight, fc2 bias,
        expert after expert), so a seeded bank holds the same numbers as a seeded list of :class:`Expert`.
        """
        with torch.no_grad():
            for e in range(self.n_experts):
                for w, b, fan_in in ((self.w1, self.b1, self.n_embd), (self.w2, self.b2, self.hidden)):
                    bound = 1 / math.sqrt(fan_in)
                    nn.init.uniform_(w[e], -bound, bound)
                    nn.init.uniform_(b[e], -bound, bound)

    def __len__(self) -> int:
        return self.n_experts

    def __getitem__(self, e: int) -> _BankedExpert:
        if isinstance(e, bool) or not isinstance(e, int) or not -self.n_experts <= e < self.n_experts:
            raise IndexError(f"expert {e!r} out of range for a bank of {self.n_experts}; "
                             f"use an integer in [0, {self.n_experts})")
        return _BankedExpert(self, e % self.n_experts)

    def __iter__(self) -> Iterator[_BankedExpert]:
        return (self[e] for e in range(self.n_experts))

    @property
    def params_per_expert(self) -> int:
        """Weights and biases of one expert: 2·C·H + H + C."""
        return 2 * self.n_embd * self.hidden + self.hidden + self.n_embd

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        """All experts at once on a padded buffer: slots (E, S, C) -> (E, S, C), two batched matmuls."""
        if slots.dim() != 3 or slots.size(0) != self.n_experts or slots.size(-1) != self.n_embd:
            raise ValueError(f"expected slots of shape ({self.n_experts}, S, {self.n_embd}), got "
                             f"{tuple(slots.shape)}; put expert e's tokens in row e (dispatch_batched does it)")
        h = torch.baddbmm(self.b1.unsqueeze(1), slots, self.w1.transpose(1, 2))  # (E, S, H)
        h = h.relu_() if self.activation == "relu" else self.act(h)
        y = torch.baddbmm(self.b2.unsqueeze(1), h, self.w2.transpose(1, 2))  # (E, S, C)
        return self.dropout(y) if self.dropout.p > 0 else y

    @classmethod
    def from_experts(cls, experts: "list[Expert] | nn.ModuleList") -> "ExpertBank":
        """Stack separate experts (:class:`Expert` or any module with ``fc1``, ``fc2`` Linear layers, e.g. makeMoE's)
        into a bank with equal outputs."""
        if len(experts) == 0 or not all(isinstance(getattr(e, "fc1", None), nn.Linear)
                                        and isinstance(getattr(e, "fc2", None), nn.Linear) for e in experts):
            raise TypeError("from_experts needs a non-empty list of Expert modules (each with fc1, fc2); got "
                            f"{[type(e).__name__ for e in experts][:4]}; build them with Expert(n_embd, hidden)")
        first = experts[0]
        if any(e.fc1.weight.shape != first.fc1.weight.shape or e.fc1.bias is None for e in experts):
            raise ValueError("every expert must have the same shapes and biases to be stacked into one bank; "
                             "build them all with the same Expert(n_embd, hidden, bias=True)")
        bank = cls(len(experts), first.fc1.in_features, first.fc1.out_features, first.dropout.p,
                   getattr(first, "activation", "relu"))
        bank.load_state_dict({f"{e}.{k}": v for e, ex in enumerate(experts) for k, v in ex.state_dict().items()})
        return bank.to(first.fc1.weight.device, first.fc1.weight.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Accept makeMoE's per-expert keys ``{prefix}{e}.fc1.weight`` etc. by stacking them (in place, before
        # the default loader runs), so checkpoints of ModuleList experts load into a bank.
        names = {"w1": "fc1.weight", "b1": "fc1.bias", "w2": "fc2.weight", "b2": "fc2.bias"}
        for stacked, per_expert in names.items():
            keys = [f"{prefix}{e}.{per_expert}" for e in range(self.n_experts)]
            if prefix + stacked not in state_dict and all(k in state_dict for k in keys):
                state_dict[prefix + stacked] = torch.stack([state_dict.pop(k) for k in keys])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
