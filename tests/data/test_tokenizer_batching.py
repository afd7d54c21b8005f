import pytest
import torch

from minillm.data.lm_batches import TokenSplits, get_batch, sequential_windows
from minillm.data.char_tokenizer import CharTokenizer


def test_tokenizer_roundtrip_and_sorted_vocab():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab == sorted(set("hello world")) and tok.vocab_size == 8
    ids = tok.encode("low")
    assert ids.dtype == torch.long and tok.decode(ids) == "low" and tok.decode(ids.tolist()) == "low"


def test_tokenizer_unknown_character():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z' is not in the tokenizer"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer(["a", "a"])


def test_splits_and_batches_are_next_token_shifted():
    data = torch.arange(100)
    splits = TokenSplits.from_tokens(data, val_fraction=0.2)
    assert len(splits.train) == 80 and torch.equal(splits.val, torch.arange(80, 100))
    x, y = get_batch(splits.train, block_size=8, batch_size=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="split must be"):
        splits.split("test")
    with pytest.raises(ValueError, match="val_fraction"):
        TokenSplits.from_tokens(data, 1.5)
    with pytest.raises(ValueError, match="more than block_size"):
        get_batch(torch.arange(5), block_size=8, batch_size=1)


def test_batches_are_reproducible_with_a_generator():
    data = torch.arange(1000)
    a = get_batch(data, 16, 4, torch.Generator().manual_seed(1))
    b = get_batch(data, 16, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0])


def test_sequential_windows_cover_the_split():
    x, y = sequential_windows(torch.arange(21), block_size=5)
    assert x.shape == (4, 5) and torch.equal(x.flatten(), torch.arange(20)) and torch.equal(y, x + 1)
    with pytest.raises(ValueError):
        sequential_windows(torch.arange(3), 5)
