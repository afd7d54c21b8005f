"""The shared training core: one AdamW builder, one schedule, one step loop, evaluation and memory helpers."""

import math

import pytest
import torch
from torch import nn

from minillm.core.evaluation import eval_mode, evaluate_classifier, tensor_batches
from minillm.core.memory import saved_activation_bytes, training_state_bytes
from minillm.core.profile import Profile, smoke_capped
from minillm.core.training import StepOutput, make_adamw, train_steps, warmup_schedule


def test_schedule_warms_up_then_decays_to_the_floor():
    cos = [warmup_schedule(s, 100, 1.0, 10, 0.1, "cosine") for s in range(101)]
    lin = [warmup_schedule(s, 100, 1.0, 10, 0.0, "linear") for s in range(101)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == cos[10] == pytest.approx(1.0) and cos[100] == pytest.approx(0.1)
    assert cos[55] == pytest.approx(0.55) and lin[55] == pytest.approx(0.5) and lin[100] == 0.0
    assert all(a >= b for a, b in zip(cos[10:], cos[11:])) and all(a >= b for a, b in zip(lin[10:], lin[11:]))
    assert warmup_schedule(50, 100, 2.0, 0, 0.0, "constant") == 2.0
    with pytest.raises(ValueError, match="shape"):
        warmup_schedule(0, 10, 1.0, shape="step")


def test_adamw_decay_rules():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    matrices = make_adamw(model, 1e-3, 0.1)
    assert [len(g["params"]) for g in matrices.param_groups] == [1, 3]
    assert [g["weight_decay"] for g in matrices.param_groups] == [0.1, 0.0]
    everything = make_adamw(model, 1e-3, 0.1, decay="all")
    assert [len(g["params"]) for g in everything.param_groups] == [4]
    with pytest.raises(ValueError, match="learning rate"):
        make_adamw(model, 0.0)
    with pytest.raises(ValueError, match="decay"):
        make_adamw(model, 1e-3, decay="biases")


def test_train_steps_runs_the_schedule_clips_and_counts():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = make_adamw(model, 0.1)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    seen = []

    def backward(batch):
        xb, yb = batch
        loss = ((model(xb) - yb) ** 2).mean()
        loss.backward()
        return StepOutput(loss.item(), examples=len(xb), tokens=2 * len(xb))

    log = train_steps(model, opt, tensor_batches(x, y, 8), backward, steps=5,
                      lr_at=lambda s: warmup_schedule(s, 5, 0.1, 2), grad_clip=math.inf,
                      on_step=lambda s, log: seen.append(s), progress=False)
    assert log.steps == 5 and seen == [0, 1, 2, 3, 4] and log.examples == 40 and log.tokens == 80
    assert log.lr[:2] == pytest.approx([0.05, 0.1]) and len(log.grad_norm) == 5
    assert log.loss[-1] < log.loss[0] and log.wall_seconds > 0
    clipped = train_steps(model, opt, tensor_batches(x, y, 8), backward, steps=2, grad_clip=1e-6, progress=False)
    assert all(n > 1e-6 for n in clipped.grad_norm)  # the norm before clipping is what is recorded
    with pytest.raises(ValueError, match="grad_clip"):
        train_steps(model, opt, [], backward, grad_clip=0.0, progress=False)


def test_eval_mode_restores_the_previous_mode_even_after_an_error():
    model = nn.Dropout(0.5).train()
    with eval_mode(model):
        assert not model.training
    assert model.training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training


def test_evaluate_classifier_counts_per_example_correctness():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    y = torch.tensor([0, 0, 0])
    out = evaluate_classifier(model, tensor_batches(x, y, 2), lambda m, b: (m(b[0]), b[1]))
    assert out.correct.tolist() == [True, False, True] and out.accuracy == pytest.approx(2 / 3) and out.n == 3
    with pytest.raises(ValueError, match="empty"):
        evaluate_classifier(model, [], lambda m, b: (m(b[0]), b[1]))


def test_memory_helpers():
    model = nn.Linear(8, 8)
    state = training_state_bytes(model)
    assert state.total == 16 * 72 and state.as_dict()["total"] == state.total
    small = saved_activation_bytes(model, lambda: model(torch.randn(2, 8)).relu().sum())
    large = saved_activation_bytes(model, lambda: model(torch.randn(32, 8)).relu().sum())
    assert 0 < small < large


def test_smoke_caps_shorten_loops_and_keep_sizes():
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass(frozen=True)
    class Cfg:
        width: int = 512
        steps: int = 1000
        examples: int | None = None
        SMOKE_CAPS: ClassVar[dict[str, int]] = {"steps": 3, "examples": 16}

    assert smoke_capped(Cfg()) == Cfg(512, 3, 16)
    assert Profile("full", smoke=True).pick(Cfg(), Cfg(width=1024)).width == 1024
    assert Profile("full").pick(Cfg(), Cfg(width=1024)) == Cfg(width=1024)
    assert Profile("tiny", smoke=True).size(100, smoke=4) == 4 and Profile("tiny").size(100) == 100
