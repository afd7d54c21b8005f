"""BLOOM as a sequence classifier: the real ``bigscience/bloom-560m`` for readers online, a small offline twin.

The original gradient-accumulation experiment (chapter 4's seed) fine-tunes ``bigscience/bloom-560m``, which no
package on the index ships. :func:`bloom_classifier` keeps that code path (``pretrained=True``, needs the hub)
and otherwise builds the same ``BloomForSequenceClassification`` class — ALiBi attention, pre-LayerNorm,
last-token pooling — from a small random ``BloomConfig``, enough to test accumulation offline.

Defined in the foundation (pretrained models); used by chapter 4.
"""

from __future__ import annotations

import torch

from minillm.pretrained.minilm import PretrainedModelMissing, transformers_module

BLOOM_NAME = "bigscience/bloom-560m"


def bloom_classifier(pretrained: bool = False, num_labels: int = 2, seed: int = 0, **config_overrides):
    """A ``BloomForSequenceClassification``: BLOOM-560m's weights (needs the hub) or a small random one.

    The small one is 2 layers × 64 dims; ``config_overrides`` change any ``BloomConfig`` field.

    Raises:
        PretrainedModelMissing: when ``pretrained=True`` and the weights cannot be fetched.
    """
    transformers = transformers_module()
    if pretrained:
        try:
            return transformers.BloomForSequenceClassification.from_pretrained(BLOOM_NAME, num_labels=num_labels)
        except OSError as err:
            raise PretrainedModelMissing(
                f"{BLOOM_NAME} is not in the local cache and the hub is unreachable or disabled "
                f"(HF_HUB_OFFLINE=1). Online, run with HF_HUB_OFFLINE=0; offline, use pretrained=False. ({err})"
            ) from None
    settings = dict(vocab_size=512, hidden_size=64, n_layer=2, n_head=4, pad_token_id=0, hidden_dropout=0.0,
                    attention_dropout=0.0, num_labels=num_labels)
    settings.update(config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.BloomForSequenceClassification(transformers.BloomConfig(**settings))
