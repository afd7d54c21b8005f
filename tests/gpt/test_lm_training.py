import math

import pytest
import torch

from minillm.data.lm_batches import TokenSplits
from minillm.gpt import GPT, GPTConfig
from minillm.core.tracking import default_store_dir, mlflow_run, tracking_uri
from minillm.core.training import make_adamw
from minillm.gpt.train import LM_TRAIN_FULL, LM_TRAIN_TINY, LMTrainConfig, evaluate_loss, perplexity, train_lm
from minillm.core.profile import Profile


def test_lr_schedule_warmup_then_cosine():
    cfg = LMTrainConfig(max_iters=100, warmup_iters=10, learning_rate=1.0, min_lr=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(10) == pytest.approx(1.0)
    assert cfg.lr_at(55) == pytest.approx(0.55)
    assert cfg.lr_at(100) == pytest.approx(0.1)
    lrs = [cfg.lr_at(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_optimizer_decays_matrices_only():
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    opt = make_adamw(model, 1e-3, weight_decay=0.5, decay="matrices")
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.5
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_profiles_pick_presets():
    assert Profile("tiny").pick(LM_TRAIN_TINY, LM_TRAIN_FULL) == LM_TRAIN_TINY
    assert Profile("full").pick(LM_TRAIN_TINY, LM_TRAIN_FULL).max_iters > LM_TRAIN_TINY.max_iters
    smoke = Profile("full", smoke=True).pick(LM_TRAIN_TINY, LM_TRAIN_FULL)
    assert smoke.max_iters == 3 and smoke.batch_size == 8  # loops and data per step capped
    assert Profile("tiny", smoke=True).pick(LM_TRAIN_TINY, LM_TRAIN_FULL).learning_rate == LM_TRAIN_TINY.learning_rate


def _periodic_data():
    # A sequence a model can learn quickly: 0 1 2 3 4 0 1 2 3 4 ...
    return TokenSplits.from_tokens(torch.arange(3000) % 5, val_fraction=0.2)


def test_training_learns_a_periodic_sequence_and_logs(mlflow_store):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=16))
    splits = _periodic_data()
    before = evaluate_loss(model, splits.val, 8)
    cfg = LMTrainConfig(max_iters=60, batch_size=8, learning_rate=1e-2, warmup_iters=5, eval_interval=20, eval_iters=2)
    calls = []

    def callback(it, m):
        calls.append(it)
        return {"custom": float(it)}

    with mlflow_run("test-exp", params={"n_embd": 16}) as tracker:
        history = train_lm(model, splits, cfg, tracker=tracker, progress=False, eval_callback=callback)
    after = evaluate_loss(model, splits.val, 8)
    assert before > math.log(5) - 0.3 and after < 0.2 < before
    assert history.iters == [20, 40, 60] and calls == [20, 40, 60]
    assert history.extra == [{"custom": 20.0}, {"custom": 40.0}, {"custom": 60.0}]
    assert len(history.batch_loss) == 60 and history.tokens_seen == 60 * 8 * 8
    assert history.wall_seconds > 0 and history.tokens_per_second > 0
    assert perplexity(after) == pytest.approx(math.exp(after))

    import mlflow

    run = mlflow.get_run(tracker.run_id)
    assert run.data.params["n_embd"] == "16" and run.data.params["train.max_iters"] == "60"
    assert "val_loss" in run.data.metrics and run.data.metrics["custom"] == 60.0
    assert mlflow_store.startswith("sqlite:///")


def test_disabled_tracker_logs_nothing():
    with mlflow_run("unused", enabled=False) as tracker:
        tracker.log_metrics({"x": 1.0})
        assert tracker.run_id is None


def test_default_store_is_the_project_mlruns(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "minillm"\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert default_store_dir() == tmp_path / "mlruns"
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
