"""What every chapter notebook runs first: seed, pick the device, fix threads, say which profile runs.

Defined in the foundation; the first code cell of every chapter calls :func:`chapter_setup`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from minillm.core.profile import Profile, current_profile
from minillm.core.runtime import device_name, pick_device, seed_everything


@dataclass(frozen=True)
class ChapterContext:
    profile: Profile
    device: torch.device
    seed: int


def chapter_setup(chapter: str, minutes_tiny: float, minutes_full: float, seed: int = 1337,
                  threads: int | None = 2) -> ChapterContext:
    """Seed everything, choose the device, pin the CPU thread count, print what runs and how long it takes.

    ``threads`` fixes ``torch.set_num_threads`` so CPU results repeat across machines (None leaves it).
    """
    # Libraries that import tqdm.auto (transformers, peft) complain once per kernel that ipywidgets is
    # missing; the course uses plain-text progress bars, so the warning is noise in every output.
    warnings.filterwarnings("ignore", message="IProgress not found")
    profile = current_profile()
    device = pick_device()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    seed_everything(seed)
    minutes = minutes_tiny if profile.is_tiny else minutes_full
    print(f"{chapter}\nprofile: {profile.description}\ndevice:  {device.type} ({device_name(device)})\n"
          f"expected run time: about {minutes:g} min with this profile")
    return ChapterContext(profile, device, seed)
