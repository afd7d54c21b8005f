"""The attention benchmark runs end to end, records what it claims to measure, and its committed results are current."""

import json
from pathlib import Path

import torch

from notebook_utils import load_script

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    return load_script("benchmarks/ch01_attention.py")


def test_benchmark_writes_json_naming_the_device_and_the_load(tmp_path, monkeypatch):
    monkeypatch.delenv("MINILLM_PROFILE", raising=False)
    monkeypatch.delenv("MINILLM_SMOKE", raising=False)
    bench = _load_script()
    path = bench.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "a.json")])
    data = json.loads(path.read_text())
    assert data["machine"]["device_type"] == "cpu" and data["machine"]["device_name"]
    assert data["profile"] == "tiny"
    assert list(data["attention"]) == ["1", "8", "32"]
    for row in data["attention"].values():
        assert set(row) == {"naive_loop", "batched_manual", "batched_sdpa"}
        assert all(v["forward_tokens_per_s"] > 0 and v["train_tokens_per_s"] > 0 for v in row.values())
    sdpa = data["sdpa_backends"]
    assert sdpa["backends"] == ["math", "flash"]  # what a CPU build offers
    t = str(sdpa["lengths"][0])
    # the math backend materialises the (B, nh, T, T) weights; the flash one never holds a T x T tensor
    assert sdpa["results"][t]["math"]["largest_tensor_elements"] == sdpa["n_head"] * int(t) ** 2
    assert sdpa["results"][t]["flash"]["largest_tensor_elements"] == sdpa["n_head"] * int(t) * sdpa["head_size"]
    dec = data["decoding"]
    w = data["config"]["block_size"]
    assert dec["variants"] == ["recompute", "refill", "sliding", "sliding_reference"]
    assert max(dec["lengths"]) > w, "decoding must be measured past the window"
    for row in dec["results"].values():
        assert all(len(r["seconds"]) >= 1 and r["tokens_per_s"] > 0 for r in row.values())
    for part in ("attention_load", "sdpa_backends", "decoding"):
        load = data[part]["load"]
        assert load["cpu_seconds"] > 0 and load["wall_seconds"] > 0 and load["loadavg_1min_start"] >= 0


def test_footprint_sees_the_weights_matrix_of_manual_attention():
    bench = _load_script()
    q = torch.randn(1, 2, 128, 16)
    from minillm.gpt.attention import attention, causal_mask

    manual = bench.call_footprint(lambda: attention(q, q, q, causal_mask(128, 128)), torch.device("cpu"))
    assert manual["largest_tensor_elements"] == 2 * 128 * 128
    assert manual["allocated_bytes"] >= 2 * 128 * 128 * 4


def test_committed_cpu_results_match_the_tiny_config_and_cover_four_windows():
    data = json.loads((ROOT / "benchmarks" / "results" / "ch01_attention-tiny-cpu.json").read_text())
    assert data["config"] == {"n_embd": 128, "n_head": 4, "block_size": 64, "n_layer": 4}
    assert data["machine"]["device_type"] == "cpu"
    assert max(data["decoding"]["lengths"]) == 4 * data["config"]["block_size"]
    assert set(data["decoding"]["results"][str(4 * 64)]) == {"recompute", "refill", "sliding", "sliding_reference"}
    assert "load" in data["decoding"], "re-run the benchmark: the committed file predates load recording"
