r"""A mean-pooling classifier head on the MiniLM encoder: the pooling its pretraining used.

``AutoModelForSequenceClassification`` classifies from the ``[CLS]`` position through BERT's pooler,
:math:`\mathrm{logits} = W_c \tanh(W_p h_{[CLS]} + b_p) + b_c`. all-MiniLM-L6-v2 was trained for sentence
embeddings with *mean* pooling, so its ``[CLS]`` state and pooler were never tuned for that objective. This head
reads the attention-masked mean of the last hidden states instead (no pooler):

.. math::

    \mathrm{logits} = W_c\, \bar h, \qquad \bar h = \frac{\sum_t m_t h_t}{\sum_t m_t} .

Chapter 3 measures whether the choice matters for full fine-tuning and for LoRA.

Defined in chapter 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolClassifier(nn.Module):
    """``bert`` (a ``BertModel``, its pooler removed), dropout, then ``classifier`` on the masked mean state."""

    def __init__(self, sequence_classifier: nn.Module):
        super().__init__()
        for part in ("bert", "dropout", "classifier"):
            if not hasattr(sequence_classifier, part):
                raise TypeError(f"MeanPoolClassifier takes a BertForSequenceClassification (it needs .bert, .dropout "
                                f"and .classifier); got a {type(sequence_classifier).__name__} without .{part}")
        self.bert = sequence_classifier.bert
        self.bert.pooler = None  # unused: the head reads the mean state
        self.dropout = sequence_classifier.dropout
        self.classifier = sequence_classifier.classifier
        self.config = sequence_classifier.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, C)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, C)
        logits = self.classifier(self.dropout(mean))  # (B, labels)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
