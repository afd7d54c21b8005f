"""The GPU check spends device time in order of value and stops cleanly at its deadline (rehearsed on the CPU)."""

import importlib.util
import json
import subprocess
import sys
import time

import pytest
import torch

from notebook_utils import ROOT


def _import_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


gpu_check = _import_gpu_check()


def test_plan_runs_the_triton_benchmark_then_the_other_cuda_benchmarks_then_notebooks_shortest_first(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks import for_device

    previous = {"steps": [{"name": "book/ch05_gptq.ipynb", "status": "ok", "wall_s": 1.0},
                          {"name": "book/ch02_moe.ipynb", "status": "ok", "wall_s": 500.0},
                          {"name": "book/ch06_updp.ipynb", "status": "failed", "wall_s": 0.5}]}
    (tmp_path / "gpu_check-full-cuda.json").write_text(json.dumps(previous))
    steps = gpu_check.plan(False, "python3", tmp_path, "full-cuda")
    kinds = [s.kind for s in steps]
    assert kinds == sorted(kinds, key=["triton", "benchmark", "notebook"].index)  # in order of value
    assert [s.name for s in steps if s.kind != "notebook"] == ["ch05_quant_matmul_gpu"] + [
        b.name for b in for_device("cuda") if b.name != "ch05_quant_matmul_gpu"]
    notebooks = [s for s in steps if s.kind == "notebook"]
    assert {s.name for s in notebooks} == {str(p.relative_to(ROOT)) for d in ("book", "solutions")
                                           for p in (ROOT / d).glob("*.ipynb")}
    known = [s.expected_s for s in notebooks if s.expected_s is not None]
    assert known == sorted(known) and notebooks[0].name == "book/ch05_gptq.ipynb"  # the last GPU check's time wins
    assert next(s for s in notebooks if s.name == "book/ch02_moe.ipynb").expected_s == 500.0
    assert all(s.expected_s is None for s in notebooks[len(known):])  # unknown times come last
    assert all("--nbval-lax" in s.command and s.env["MINILLM_PROFILE"] == "full" for s in notebooks)
    assert all(s.env["MINILLM_DEVICE"] == "cuda" and s.env["MINILLM_RESULTS"] == str(tmp_path) for s in steps)


def test_steps_past_the_deadline_are_killed_or_skipped_and_every_record_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "RESERVE", 0.2)
    monkeypatch.setattr(gpu_check, "MIN_LEFT", 0.5)
    py = sys.executable
    sleeper = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    steps = [gpu_check.Step("quick", "benchmark", [py, "-c", "print('done')"], {}),
             gpu_check.Step("slow", "benchmark", [py, "-c", sleeper], {}),
             gpu_check.Step("later", "notebook", [py, "-c", "print('never')"], {})]
    start = time.monotonic()
    summary = gpu_check.run_steps(steps, start + 3.0, tmp_path, "test", {"_t0": start})
    assert time.monotonic() - start < 15  # the sleeper (and its child's pipe) did not hold the check
    assert [s["status"] for s in summary["steps"]] == ["ok", "deadline", "skipped"]
    assert summary["stopped_by_deadline"] and summary["counts"] == {"ok": 1, "deadline": 1, "skipped": 1}
    written = json.loads((tmp_path / "gpu_check-test.json").read_text())
    assert [s["name"] for s in written["steps"]] == ["quick", "slow", "later"] and "_t0" not in written
    for i, name in enumerate(["quick", "slow", "later"], 1):
        assert json.loads((tmp_path / "gpu_check-test" / f"{i:02d}-{name}.json").read_text())["name"] == name
    assert "done" in (tmp_path / "gpu_check-test" / "01-quick.log").read_text()
    assert summary["steps"][0]["wall_s"] is not None and summary["steps"][1]["wall_s"] < 10


def test_dry_run_keeps_the_order_and_stops_cleanly_at_a_short_deadline(tmp_path):
    start = time.monotonic()
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", "--deadline-s", "50", "--skip-install",
                           "--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - start
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]  # stopped before the end: not all ok
    summary = json.loads((tmp_path / "gpu_check-dryrun-cpu.json").read_text())
    planned = [s.name for s in gpu_check.plan(True, sys.executable, tmp_path, "dryrun-cpu")]
    assert [s["name"] for s in summary["steps"]] == planned
    statuses = [s["status"] for s in summary["steps"]]
    # finished steps, then at most one step cut at the deadline, then skipped ones (on an idle 2-core machine the
    # Triton step finishes in ~10 s; a heavily loaded one may cut it, which is the same clean stop)
    first_stop = next(i for i, s in enumerate(statuses) if s in ("deadline", "skipped"))
    assert all(s in ("ok", "failed") for s in statuses[:first_stop]) and statuses[-1] == "skipped"
    assert all(s == "skipped" for s in statuses[first_stop + 1:])
    if statuses[0] == "ok":  # the step's own JSON was written before the next step started
        bench = json.loads((tmp_path / "ch05_quant_matmul_gpu-dryrun-full-cpu.json").read_text())
        assert bench["dry_run"] and bench["rows"] and summary["steps"][0]["results"]
    assert summary["stopped_by_deadline"] and summary["versions"]["torch"] == torch.__version__
    assert summary["wall_s"] <= 50 + 5 and wall < 50 + 30
    for s in summary["steps"]:
        assert s["status"] == "skipped" or s["wall_s"] is not None and s["cpu_s"] is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without a GPU")
def test_the_real_check_stops_at_once_without_a_gpu(tmp_path):
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--deadline-s", "60", "--skip-install", "--out-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr and "--dry-run" in done.stderr
    summary = json.loads((tmp_path / "gpu_check-full-cuda.json").read_text())
    assert summary["status"] == "no-gpu" and all(s["status"] == "pending" for s in summary["steps"])


def test_setup_installs_only_the_missing_pins_into_a_venv_that_sees_the_machines_torch(monkeypatch):
    calls = []
    probes = iter([{"torch": "2.11.0", "cuda_available": True, "venv": False, "missing": ["nbval", "peft", "triton"]},
                   {"torch": "2.11.0", "cuda_available": True, "venv": True, "missing": []}])
    monkeypatch.setattr(gpu_check, "_probe", lambda python, gpu=True: next(probes))
    monkeypatch.setattr(gpu_check, "_run_logged", lambda facts, cmd, timeout: calls.append(cmd))
    monkeypatch.setattr(gpu_check.Path, "exists", lambda self: "gpu-venv" in str(self))  # no .venv; the venv "exists"
    args = gpu_check.argparse.Namespace(python=None, dry_run=False, skip_install=False)
    python, facts = gpu_check.setup(args, time.monotonic() + 600)
    assert python.endswith("_build/gpu-venv/bin/python") and facts["probe"]["missing"] == []
    pip = calls[-1]
    assert pip[:4] == [python, "-m", "pip", "install"] and {gpu_check._pins()["nbval"], gpu_check._pins()["peft"]} <= set(pip)
    assert not any(a.startswith(("torch", "triton")) for a in pip)  # the machine's own torch and triton are kept
