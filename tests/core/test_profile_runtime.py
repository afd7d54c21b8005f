import json

import pytest
import torch

from minillm.core.bench import interleaved_timings, read_results, results_path, time_call, write_results
from minillm.core.notebook import chapter_setup
from minillm.core.profile import PROFILE_ENV, Profile, current_profile
from minillm.core.runtime import device_name, machine_info, pick_device, seed_everything


def test_profile_defaults_to_tiny(monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    profile = current_profile()
    assert profile.name == "tiny" and profile.is_tiny
    assert profile.pick("small", "big") == "small"


def test_full_profile_picks_full(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, " FULL ")
    profile = current_profile()
    assert profile.name == "full" and profile.pick("small", "big") == "big"
    assert "GPU" in profile.description


def test_unknown_profile_names_the_fix(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "medium")
    with pytest.raises(ValueError, match="MINILLM_PROFILE.*tiny"):
        current_profile()


def test_seed_everything_repeats_random_streams():
    seed_everything(5)
    a = torch.randn(3)
    seed_everything(5)
    assert torch.equal(a, torch.randn(3))


def test_pick_device(monkeypatch):
    monkeypatch.delenv("MINILLM_DEVICE", raising=False)
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device().type == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA"):
            pick_device("cuda")
        monkeypatch.setenv("MINILLM_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="MINILLM_DEVICE"):
            pick_device()


def test_machine_info_names_the_device():
    info = machine_info("cpu")
    assert info["device_type"] == "cpu"
    assert info["device_name"] == device_name("cpu") and info["device_name"]
    assert info["torch_threads"] >= 1


def test_chapter_setup_prints_profile_and_seeds(capsys, monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    ctx = chapter_setup("Chapter X", minutes_tiny=1, minutes_full=9, seed=3, threads=None)
    out = capsys.readouterr().out
    assert "profile: tiny" in out and "about 1 min" in out
    a = torch.randn(2)
    seed_everything(3)
    assert torch.equal(a, torch.randn(2)) and ctx.seed == 3


def test_time_call_and_results_roundtrip(tmp_path):
    calls = []
    timing = time_call(lambda: calls.append(1), "cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and timing["repeats"] == 5
    assert timing["min_s"] <= timing["median_s"] <= timing["max_s"]
    path = results_path("demo", "tiny", "cpu", tmp_path)
    assert path.name == "demo-tiny-cpu.json"
    write_results(path, {"value": 1.5}, "cpu")
    data = read_results(path, "python make_demo.py")
    assert data["value"] == 1.5 and data["machine"]["device_type"] == "cpu"
    assert json.loads(path.read_text())["created"].endswith("Z")


def test_interleaved_timings_call_the_variants_in_turn():
    calls = []
    timing = interleaved_timings({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, "cpu",
                                 rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up of each, then one call of each per round
    assert set(timing) == {"a", "b"} and timing["a"]["rounds"] == 3
    assert timing["a"]["min_s"] <= timing["a"]["median_s"]


def test_read_results_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python make_demo.py"):
        read_results(tmp_path / "missing.json", "python make_demo.py")


def test_smoke_switch_is_read_and_validated(monkeypatch):
    monkeypatch.setenv("MINILLM_PROFILE", "full")
    monkeypatch.setenv("MINILLM_SMOKE", "1")
    profile = current_profile()
    assert profile.smoke and not profile.full_length and "smoke" in profile.description
    monkeypatch.setenv("MINILLM_SMOKE", "maybe")
    with pytest.raises(ValueError, match="MINILLM_SMOKE"):
        current_profile()
    monkeypatch.delenv("MINILLM_SMOKE")
    assert not current_profile().smoke


def test_full_length_asserts_are_skipped_and_said_so_in_a_smoke_run(capsys):
    Profile("full", smoke=True).assert_full_length(False, "val loss below 1.6")
    assert "[smoke run: not checked] val loss below 1.6" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="val loss"):
        Profile("full").assert_full_length(False, "val loss below 1.6")


def test_results_dir_is_found_from_the_working_directory(monkeypatch, tmp_path):
    from minillm.core.paths import project_root, results_dir

    monkeypatch.delenv("MINILLM_RESULTS", raising=False)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "minillm"\n')
    (tmp_path / "book").mkdir()
    monkeypatch.chdir(tmp_path / "book")
    assert project_root() == tmp_path and results_dir() == tmp_path / "benchmarks" / "results"
    monkeypatch.setenv("MINILLM_RESULTS", str(tmp_path / "elsewhere"))
    assert results_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("MINILLM_RESULTS")
    monkeypatch.chdir(tmp_path.parent)
    if project_root() is None:
        with pytest.raises(FileNotFoundError, match="MINILLM_RESULTS"):
            results_dir()
