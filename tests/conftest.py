"""Shared test set-up: deterministic CPU threads and an isolated mlflow store."""

from __future__ import annotations

import pytest
import torch


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
