"""One switch picks the size of every experiment: the *profile*; a second one shortens it to a smoke test.

``MINILLM_PROFILE=tiny`` (the default) runs every chapter on a laptop CPU in minutes;
``MINILLM_PROFILE=full`` runs the configurations the original write-ups used, meant for a GPU.
Each chapter prints the active profile in its first cell.

``MINILLM_SMOKE=1`` keeps the profile's configurations (model sizes, dtypes, code paths) but caps loop
counts and data sizes, so that the full profile can run end to end on a CPU in CI and a shape, dtype or
config bug fails there rather than on the first GPU run. Every preset is selected with
:meth:`Profile.pick`, which applies the caps a config class declares in ``SMOKE_CAPS``; notebooks cap
their own loops with :meth:`Profile.size`. Asserts about results that only make sense after a full-length
run go through :meth:`Profile.assert_full_length`, which says so when it skips them.

Defined in the foundation; used by every chapter.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, TypeVar

PROFILE_ENV = "MINILLM_PROFILE"
SMOKE_ENV = "MINILLM_SMOKE"
PROFILES = ("tiny", "full")

T = TypeVar("T")


@dataclass(frozen=True)
class Profile:
    """The active profile: its name, and whether loops are capped for a smoke test."""

    name: str
    smoke: bool = False

    def __post_init__(self):
        if self.name not in PROFILES:
            raise ValueError(f"unknown profile {self.name!r}; choose one of {PROFILES}")

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny"

    @property
    def full_length(self) -> bool:
        """False under ``MINILLM_SMOKE=1``: loops were capped, so results mean nothing."""
        return not self.smoke

    @property
    def description(self) -> str:
        text = ("tiny: CPU-sized configs, each chapter runs in minutes on 2 cores" if self.is_tiny
                else "full: the original papers' configs, meant for one GPU")
        return text + (" [smoke test: loops and data capped by MINILLM_SMOKE=1]" if self.smoke else "")

    def pick(self, tiny: T, full: T) -> T:
        """``tiny`` or ``full`` by profile — the one preset selector of the course.

        Under the smoke switch a dataclass config comes back with its ``SMOKE_CAPS`` applied
        (see :func:`smoke_capped`); anything else is returned as it is.
        """
        chosen = tiny if self.is_tiny else full
        return smoke_capped(chosen) if self.smoke else chosen

    def size(self, n: int, smoke: int = 2) -> int:
        """A loop count or data size: ``n``, or at most ``smoke`` under the smoke switch."""
        return min(n, smoke) if self.smoke else n

    def assert_full_length(self, condition: bool, message: str) -> None:
        """``assert condition, message`` — skipped, and said so, in a smoke run (its numbers mean nothing)."""
        if self.smoke:
            print(f"[smoke run: not checked] {message}")
            return
        assert condition, message


def smoke_capped(config: T) -> T:
    """``config`` with every field named in its class's ``SMOKE_CAPS`` lowered to the cap.

    ``SMOKE_CAPS`` maps field names to caps for loop counts and data sizes only (iterations, epochs,
    examples, evaluation batches); a field holding ``None`` ("all of it") takes the cap. Fields that
    change a code path are never capped. Fields that are configs themselves are capped the same way.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    caps: dict[str, Any] = getattr(type(config), "SMOKE_CAPS", {})
    changes = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in caps:
            changes[f.name] = caps[f.name] if value is None else min(value, caps[f.name])
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            capped = smoke_capped(value)  # a config made of configs (e.g. one per training stage)
            if capped != value:
                changes[f.name] = capped
    return dataclasses.replace(config, **changes) if changes else config


def _flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ValueError(f"{name}={raw!r} is not a switch value; set it to 1 (on) or 0 (off)")


def current_profile() -> Profile:
    """Read ``MINILLM_PROFILE`` (``tiny`` when unset) and ``MINILLM_SMOKE`` (off when unset).

    Raises:
        ValueError: when the profile is neither ``tiny`` nor ``full``, or the smoke switch is not 0/1.
    """
    name = os.environ.get(PROFILE_ENV, "tiny").strip().lower() or "tiny"
    if name not in PROFILES:
        raise ValueError(
            f"{PROFILE_ENV}={name!r} is not a known profile; "
            f"set it to one of {PROFILES} (e.g. `export {PROFILE_ENV}=tiny`)."
        )
    return Profile(name, smoke=_flag(SMOKE_ENV))
