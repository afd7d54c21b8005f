r"""Sampling text from a language model, with temperature, top-k and a KV cache.

At each step the next token is drawn from

.. math::

    p(x_{t+1} = i) \propto \exp(z_i / \tau) \quad \text{for } i \in \text{top-}k(z), \text{ else } 0,

where z are the logits, τ the temperature (τ → 0 is greedy decoding) and top-k keeps the k most likely.
With ``use_cache=True`` each step feeds only the newest token and reads earlier keys/values from the
cache; once the context window is full, the window slides and the cache is refilled from the cropped
context (absolute position embeddings shift, so the old keys cannot be reused), which keeps the result
identical to recomputing the cropped context from scratch.

Defined in chapter 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minillm.core.evaluation import eval_mode


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B, 1). ``temperature=0`` picks the argmax."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, use_cache: bool = True, generator: torch.Generator | None = None,
             return_logits: bool = False):
    """Extend ``idx`` (B, T) by ``max_new_tokens`` sampled tokens -> (B, T + max_new_tokens).

    With ``return_logits=True`` also returns the logits each token was sampled from, (B, new, V),
    which is how chapter 1 proves the cached path equal to full recomputation.
    """
    block_size = model.config.block_size
    cache = model.new_cache(idx.size(0), idx.device) if use_cache else None
    step_logits = []
    with eval_mode(model):
        logits = _prefill(model, idx, cache)
        for _ in range(max_new_tokens):
            step_logits.append(logits)
            next_id = sample_next(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
            if cache is None or cache.length >= block_size:
                logits = _prefill(model, idx, cache)  # no cache, or the window slid: recompute
            else:
                logits = model(next_id, cache=cache)[0][:, -1]  # one new position per layer
    if return_logits:
        return idx, torch.stack(step_logits, dim=1)
    return idx


def _prefill(model, idx: torch.Tensor, cache) -> torch.Tensor:
    """Run the last ``block_size`` tokens through the model (refilling ``cache``); logits of the last one."""
    context = idx[:, -model.config.block_size:]
    if cache is not None:
        cache.reset()
    return model(context, cache=cache)[0][:, -1]  # (B, V)
