"""One switch picks the size of every experiment: the *profile*.

``MINILLM_PROFILE=tiny`` (the default) runs every chapter on a laptop CPU in minutes;
``MINILLM_PROFILE=full`` runs the configurations the original write-ups used, meant for a GPU.
Each chapter prints the active profile in its first cell (Practice 2 in the style guide).

Defined in the foundation; used by every chapter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROFILE_ENV = "MINILLM_PROFILE"
PROFILES = ("tiny", "full")


@dataclass(frozen=True)
class Profile:
    """The active profile: its name and what it is meant for."""

    name: str

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny"

    @property
    def description(self) -> str:
        if self.is_tiny:
            return "tiny: CPU-sized configs, each chapter runs in minutes on 2 cores"
        return "full: the original papers' configs, meant for one GPU"

    def pick(self, tiny, full):
        """Return ``tiny`` or ``full`` depending on the profile (a one-line preset switch)."""
        return tiny if self.is_tiny else full


def current_profile() -> Profile:
    """Read ``MINILLM_PROFILE`` (``tiny`` when unset).

    Raises:
        ValueError: when the variable holds anything but ``tiny`` or ``full``.
    """
    name = os.environ.get(PROFILE_ENV, "tiny").strip().lower() or "tiny"
    if name not in PROFILES:
        raise ValueError(
            f"{PROFILE_ENV}={name!r} is not a known profile; "
            f"set it to one of {PROFILES} (e.g. `export {PROFILE_ENV}=tiny`)."
        )
    return Profile(name)
