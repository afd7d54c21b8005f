"""A character-level tokenizer: every distinct character is one token.

Defined in chapter 1; used by chapters 1, 2 and 5.
"""

from __future__ import annotations

import torch


class CharTokenizer:
    """Maps characters to ids 0..V-1 in sorted order, and back.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.decode(tok.encode("hell"))
    'hell'
    """

    def __init__(self, vocab: list[str]):
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab must not contain duplicate characters")
        self.vocab = list(vocab)
        self.stoi = {ch: i for i, ch in enumerate(self.vocab)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """Text -> int64 tensor of shape (len(text),)."""
        try:
            return torch.tensor([self.stoi[ch] for ch in text], dtype=torch.long)
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} is not in the tokenizer's vocabulary of {self.vocab_size}; "
                "build the tokenizer from text that contains it (CharTokenizer.from_text)."
            ) from None

    def decode(self, ids) -> str:
        """A sequence of ids (tensor or list) -> text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside this tokenizer's vocabulary [0, {self.vocab_size}); "
                             "decode ids produced by this tokenizer or a model with the same vocab_size")
        return "".join(self.vocab[i] for i in ids)
