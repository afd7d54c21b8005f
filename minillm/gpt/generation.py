r"""Sampling text from a language model, with temperature, top-k and a KV cache.

At each step the next token is drawn from

.. math::

    p(x_{t+1} = i) \propto \exp(z_i / \tau) \quad \text{for } i \in \text{top-}k(z), \text{ else } 0,

where z are the logits, τ the temperature (τ → 0 is greedy decoding) and top-k keeps the k most likely.

With ``use_cache=True`` each step feeds only the newest token and reads earlier keys/values from the cache. What
happens when the sequence outgrows the context window ``block_size`` depends on how the model encodes positions:

* **learned positions** (``refill``): the context is cropped to the last ``block_size`` tokens, whose position
  embeddings all shift by one, so no cached key stays valid: the cache is emptied and refilled from the cropped
  context at every step past the window. Cached or not, each token is predicted from the last ``block_size`` tokens
  placed at positions ``0 .. block_size - 1`` ("crop and recompute", nanoGPT's ``generate``).
* **rotary positions** (``sliding``): the model attends over a sliding window of the last ``block_size`` positions
  at their true absolute positions; the cache drops the oldest key and appends one per step. Without the cache,
  the same function is computed by one forward pass over the whole sequence (which grows at every step).

Either way ``use_cache`` never changes a token: it only changes how much is computed.

Defined in chapter 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minillm.core.evaluation import eval_mode


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B, 1). ``temperature=0`` picks the argmax."""
    _check_sampling(temperature, top_k)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a float tensor (B, V), got {getattr(logits, 'dtype', type(logits))} of "
                         f"shape {tuple(getattr(logits, 'shape', ()))}; take model(idx)[0][:, -1]")
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise ValueError("logits contain NaN or +inf, so no distribution can be sampled; the model diverged or its "
                         "weights are corrupt: check the loss and reload the checkpoint")
    if torch.isneginf(logits).all(dim=-1).any():
        raise ValueError("a row of logits is -inf everywhere, so every token has probability 0; mask fewer tokens")
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
    which is how chapter 1 proves the cached paths equal to recomputation.
    """
    _check_generate(model, idx, max_new_tokens, temperature, top_k)
    block_size = model.config.block_size
    sliding = getattr(model.config, "position", "learned") == "rope"
    cache = model.new_cache(idx.size(0), idx.device) if use_cache else None
    step_logits = []
    with eval_mode(model):
        logits = _prefill(model, idx, cache, sliding)
        for _ in range(max_new_tokens):
            step_logits.append(logits)
            next_id = sample_next(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
            if cache is None or (not sliding and cache.length >= block_size):
                logits = _prefill(model, idx, cache, sliding)  # no cache, or the learned window slid: recompute
            else:
                logits = model(next_id, cache=cache)[0][:, -1]  # one new position per layer
    if return_logits:
        return idx, torch.stack(step_logits, dim=1)
    return idx


def _prefill(model, idx: torch.Tensor, cache, sliding: bool) -> torch.Tensor:
    """Logits (B, V) of the next token after ``idx``, (re)filling ``cache`` if given.

    Learned positions: the last ``block_size`` tokens. RoPE: the whole sequence (sliding-window attention); with a
    cache it is fed in chunks of ``block_size`` so that each fits the sliding buffers.
    """
    block_size = model.config.block_size
    if not sliding:
        if cache is not None:
            cache.reset()
        return model(idx[:, -block_size:], cache=cache)[0][:, -1]
    if cache is None:
        return model(idx)[0][:, -1]
    cache.reset()
    for start in range(0, idx.size(1), block_size):
        logits = model(idx[:, start:start + block_size], cache=cache)[0][:, -1]
    return logits


def _check_sampling(temperature: float, top_k: int | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy, 1 = the model's distribution), "
                         f"got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None (no truncation), got {top_k!r}")


def _check_generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if not hasattr(model, "config") or not hasattr(model, "new_cache"):
        raise TypeError(f"generate needs a minillm language model (with .config and .new_cache), got "
                        f"{type(model).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError(f"the prompt must be a (B, T) tensor of token ids, got shape "
                         f"{tuple(getattr(idx, 'shape', ()))}; add a batch dimension with prompt.unsqueeze(0)")
    if idx.size(1) == 0:
        raise ValueError("the prompt is empty (T = 0): a model needs at least one token to predict the next; "
                         "start from a newline or any token of the vocabulary")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    _check_sampling(temperature, top_k)
