"""Shared test set-up: deterministic CPU threads, an isolated mlflow store, Triton's interpreter on CPU."""

from __future__ import annotations

import os

import pytest
import torch

# Chapter 5's Triton kernels run in the interpreter when there is no GPU. The variable must be set
# before any module with @triton.jit is imported, hence here, at collection time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """Point mlflow at a throw-away sqlite store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
