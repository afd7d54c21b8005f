"""Pretrained models, offline — each from a package on PyPI, never from a model hub.

* :mod:`~minillm.pretrained.minilm` — all-MiniLM-L6-v2, a 22.7 M-parameter BERT encoder (chapters 3, 4, 5);
* :mod:`~minillm.pretrained.smollm2` — SmolLM2-135M, a Llama-architecture decoder (chapters 3, 5);
* :mod:`~minillm.pretrained.bloom` — BLOOM's classifier class: the real 560m online, a small twin offline (chapter 4).
"""

from minillm.pretrained.bloom import BLOOM_NAME, bloom_classifier
from minillm.pretrained.minilm import (INSTALL_COMMAND, MINILM_PACKAGE, PretrainedModelMissing, embed,
                                       load_minilm_classifier, load_minilm_encoder, load_minilm_tokenizer,
                                       minilm_path)
from minillm.pretrained.smollm2 import load_smollm2, smollm2_gguf

__all__ = ["BLOOM_NAME", "bloom_classifier", "INSTALL_COMMAND", "MINILM_PACKAGE", "PretrainedModelMissing", "embed",
           "load_minilm_classifier", "load_minilm_encoder", "load_minilm_tokenizer", "minilm_path", "load_smollm2",
           "smollm2_gguf"]
