"""The gradient-accumulation benchmark measures one scheme end to end and reports honest memory numbers."""

import pytest

from notebook_utils import load_script


def _load_script():
    return load_script("benchmarks/ch04_grad_accumulation.py")


def test_peak_rss_reset_and_read():
    bench = _load_script()
    rss = bench._status_kb("VmRSS")
    assert rss is not None and rss > 0
    if bench._reset_peak_rss():
        assert bench._status_kb("VmHWM") >= rss * 0.5


@pytest.mark.slow
def test_measure_one_scheme(monkeypatch):
    monkeypatch.delenv("MINILLM_PROFILE", raising=False)
    bench = _load_script()
    run = bench.measure("accumulation 16", steps=1)
    assert run["optimizer_steps"] == 1 and run["examples"] == 16 and run["forward_backward_passes"] == 16
    assert run["accumulation_steps"] == 16 and run["micro_batch_size"] == 1
    assert run["seconds_per_example"] > 0 and run["optimizer_step_seconds"] > 0 and run["activation_bytes"] > 0
    assert run["state_bytes"] > 80 * 2**20  # 22.7 M fp32 weights alone are ~87 MiB
    assert run["cuda_peak_bytes"] is None


@pytest.mark.slow
def test_reviews_against_the_cap(monkeypatch):
    monkeypatch.delenv("MINILLM_PROFILE", raising=False)
    reviews = _load_script().measure_reviews()
    one, two = reviews["micro_batches"]
    assert one["tokens"] == two["tokens"] == 512
    assert one["fits_cap"] and not two["fits_cap"]  # the cap leaves room for one review, not two
    assert 1.9 * one["activation_bytes"] < two["activation_bytes"] < 2.1 * one["activation_bytes"]
    assert "micro_batch_size=1 with accumulation_steps=16" in reviews["batch_16_refused"]
