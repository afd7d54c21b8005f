"""The LoRA benchmark's pieces run, give what the chapter reads, and the committed CPU result fits the tiny config."""

import json
from pathlib import Path

import torch

from notebook_utils import load_script

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    return load_script("benchmarks/ch03_lora_vs_full.py")


def test_measure_one_lora_step_reports_throughput_and_memory():
    torch.set_num_threads(2)
    result = _load_script().measure("lora", torch.device("cpu"), batch_size=2, seq_len=8, steps=1)
    assert result["method"] == "lora" and result["examples_per_s"] > 0
    assert result["trainable_params"] < 0.02 * result["total_params"]
    state = result["training_state_bytes"]
    assert state["optimizer"] == 2 * state["gradients"] > 0  # AdamW's real state after the timed steps
    assert result["state_beyond_weights_bytes"] == state["gradients"] + state["optimizer"]
    assert result["saved_activation_bytes"] > 0
    assert result["peak_memory_bytes"] >= 0


def test_adapter_checkpoint_is_at_most_two_percent_of_the_full_one(tmp_path):
    sizes = _load_script().checkpoint_sizes(tmp_path)
    assert sizes["adapter_fraction"] <= 0.02
    assert sizes["full_model_bytes"] > 4 * 22_000_000  # every float32 weight of MiniLM is in it


def test_committed_cpu_results_match_the_tiny_config():
    data = json.loads((ROOT / "benchmarks" / "results" / "ch03_lora_vs_full-tiny-cpu.json").read_text())
    assert data["machine"]["device_type"] == "cpu"
    assert (data["config"]["batch_size"], data["config"]["seq_len"]) == _load_script().SETTINGS["tiny"][:2]
    assert set(data["methods"]) == {"full", "lora"}
    assert data["methods"]["lora"]["trainable_params"] < data["methods"]["full"]["trainable_params"] / 50
    assert data["checkpoints"]["adapter_fraction"] <= 0.02
    assert set(data["inference"]) == {"base", "lora_unmerged", "lora_merged"}
    assert all(v["rounds"] >= 10 for v in data["inference"].values())  # interleaved, not one after the other
    for name in ("full", "lora"):
        m = data["methods"][name]
        assert m["state_beyond_weights_bytes"] == m["training_state_bytes"]["gradients"] + m["training_state_bytes"]["optimizer"]
        assert m["saved_activation_bytes"] > 0
    act = data["activation_bytes"]
    assert act["lora_dropout_0.1"] > act["lora_dropout_0"]  # the adapters' dropout keeps its own copies
