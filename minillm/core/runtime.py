"""Seeding, device choice and a description of the machine a result came from.

Every notebook starts by calling :func:`seed_everything` and :func:`pick_device`, and every
benchmark records :func:`device_name`, so a number in the book always says where it was measured.

Defined in the foundation; used by every chapter.
"""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

DEVICE_ENV = "MINILLM_DEVICE"


def seed_everything(seed: int = 1337) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(preferred: str | None = None) -> torch.device:
    """Choose where tensors live: ``preferred``, else ``$MINILLM_DEVICE``, else CUDA if present, else CPU.

    Raises:
        RuntimeError: when CUDA is asked for on a machine without it. ValueError: an unknown device name.
    """
    name = preferred or os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r} is not a device name; use 'cpu', 'cuda' or 'cuda:<index>'") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: the course runs on 'cpu' or 'cuda'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was requested but this PyTorch build sees no CUDA GPU; "
            f"unset {DEVICE_ENV} or pass device='cpu'."
        )
    return device


def device_name(device: torch.device | str | None = None) -> str:
    """A human-readable name of the device, e.g. ``'NVIDIA H100 80GB HBM3'`` or the CPU model."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: torch.device | str | None = None) -> dict:
    """What a benchmark JSON records about where it ran."""
    device = torch.device(device) if device is not None else pick_device()
    return {
        "device_type": device.type,
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
