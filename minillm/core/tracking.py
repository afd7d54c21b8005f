"""Experiment tracking with mlflow in a local store that ``mlflow ui`` opens.

Runs go to ``$MLFLOW_TRACKING_URI`` when it is set, else to ``sqlite:///<project>/mlruns/mlflow.db``
where ``<project>`` is the course checkout above the working directory (:func:`minillm.core.paths.project_root`).
Browse them with::

    mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db

Defined in the foundation; every training loop logs through :class:`Tracker`.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from minillm.core.paths import project_root


def default_store_dir() -> Path:
    """``<project>/mlruns``, or ``./mlruns`` outside a checkout of the course."""
    return (project_root() or Path.cwd().resolve()) / "mlruns"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = default_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


class Tracker:
    """Logs params and metrics to one mlflow run; ``Tracker(None)`` logs nothing (for tests)."""

    def __init__(self, run):
        self.run = run

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run is not None else None

    def log_params(self, params: dict) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_params({k: v for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_figure(self, figure, name: str) -> None:
        if self.run is not None:
            import mlflow

            mlflow.log_figure(figure, name)


@contextmanager
def mlflow_run(experiment: str, run_name: str | None = None, params: dict | None = None, enabled: bool = True):
    """``with mlflow_run("ch01-gpt", params=cfg) as tracker:`` — a run in the local store."""
    if not enabled:
        yield Tracker(None)
        return
    for name in ("mlflow", "alembic"):  # keep database migrations out of notebook outputs
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = default_store_dir() / "artifacts" / experiment
        mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        tracker = Tracker(run)
        if params:
            tracker.log_params(params)
        yield tracker
