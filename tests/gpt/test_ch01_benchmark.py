"""The attention benchmark runs end to end and meets chapter 1's bar in one run."""

import json
from pathlib import Path

import pytest
import torch

from notebook_utils import load_script

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    return load_script("benchmarks/ch01_attention.py")


def test_benchmark_writes_json_naming_the_device(tmp_path, monkeypatch):
    monkeypatch.delenv("MINILLM_PROFILE", raising=False)
    bench = _load_script()
    path = bench.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "a.json")])
    data = json.loads(path.read_text())
    assert data["machine"]["device_type"] == "cpu" and data["machine"]["device_name"]
    assert data["profile"] == "tiny"
    assert list(data["attention"]) == ["1", "8", "32"]
    for row in data["attention"].values():
        assert set(row) == {"naive_loop", "batched_manual", "batched_sdpa"}
        assert all(v["forward_tokens_per_s"] > 0 and v["train_tokens_per_s"] > 0 for v in row.values())
    assert data["decoding"]["kv_cache"]["tokens_per_s"] > 0


def test_batched_attention_is_at_least_twice_the_per_head_loop_for_one_sequence():
    torch.set_num_threads(2)
    bench = _load_script()
    result = bench.attention_throughput(n_embd=128, n_head=4, block_size=64, batch_size=1,
                                        device=torch.device("cpu"), repeats=30)
    assert result["batched_sdpa"]["forward_speedup_vs_naive"] >= 2.0, result["batched_sdpa"]


def test_committed_cpu_results_match_the_tiny_config():
    data = json.loads((ROOT / "benchmarks" / "results" / "ch01_attention-tiny-cpu.json").read_text())
    assert data["config"] == {"n_embd": 128, "n_head": 4, "block_size": 64}
    assert data["machine"]["device_type"] == "cpu"
