"""The GPU check: spend scarce device time in order of value, stop cleanly at a deadline, keep what finished.

    python3 scripts/gpu_check.py                      # on a CUDA machine: 12-minute deadline
    python3 scripts/gpu_check.py --deadline-min 30    # a longer run
    python3 scripts/gpu_check.py --dry-run            # this CPU: same steps, order and JSON, small and interpreted
    python3 scripts/gpu_check.py --list               # print the plan only

Steps, in this order (value per device-minute):

1. ``benchmarks/ch05_quant_matmul_gpu.py`` — the Triton low-bit matmul against fp16, the one claim that exists
   only on a GPU;
2. the other benchmarks of ``benchmarks/__init__.py`` meant for CUDA, in the list's order;
3. every notebook of ``book/`` and ``solutions/`` under nbval with the full profile (``--nbval-lax``: the committed
   outputs come from the tiny profile, so the asserts inside the cells are the check), shortest first — by the
   last GPU check's times if there are any, else by ``benchmarks/results/notebook_times-*.json``.

Each step runs in its own process group with a timeout (its cap, and never past the deadline); its wall time is
printed when it ends and its record (``<summary folder>/NN-<step>.json``, with the log beside it) is written
before the next starts; the summary ``<out>/gpu_check-<profile>-<device>.json`` (steps, status, wall and CPU
times, versions, device) is rewritten after every step, so a run cut short still says what finished and what
was skipped. Without a GPU the real check stops at once (exit 2). Setup uses ``.venv/bin/python`` if it imports
torch, else this interpreter (e.g. a machine image's torch and triton), installs missing pure-Python pins with
pip (short timeouts; torch and triton are never reinstalled) and records every version it ran with.

Every step runs with the full profile (``MINILLM_RESULTS`` = the results folder, so a notebook reads the benchmark
results this run wrote). ``--dry-run``: the CPU, Triton's interpreter, the Triton benchmark's small shapes
(``--dry-run``) and ``MINILLM_SMOKE=1`` (loops and data capped); results go to a temporary folder unless
``--out-dir`` is given. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRITON_BENCH = "ch05_quant_matmul_gpu"
CAPS = {"triton": 360.0, "benchmark": 180.0, "notebook": 420.0}  # seconds per step, before the deadline's cut
RESERVE = 5.0  # seconds kept to write the summary
MIN_LEFT = 10.0  # no step starts with less time than this left
NEEDED = {  # module -> requirement name (pinned in requirements.txt)
    "numpy": "numpy", "tqdm": "tqdm", "safetensors": "safetensors", "scipy": "scipy", "sklearn": "scikit-learn",
    "mlflow": "mlflow", "transformers": "transformers", "gguf": "gguf", "accelerate": "accelerate",
    "matplotlib": "matplotlib", "pytest": "pytest", "nbval": "nbval", "ipykernel": "ipykernel",
    "nbclient": "nbclient", "nbformat": "nbformat", "jupytext": "jupytext", "peft": "peft"}
NOTEBOOK_MODULES = ("pytest", "nbval", "ipykernel")


@dataclass
class Step:
    name: str
    kind: str  # "triton", "benchmark" or "notebook"
    command: list[str]
    env: dict[str, str]
    expected_s: float | None = None
    status: str = "pending"  # ok, failed, timeout, deadline, skipped, interrupted
    reason: str = ""
    returncode: int | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    timeout_s: float | None = None
    started: str | None = None
    results: list[str] = field(default_factory=list)
    log: str | None = None
    log_tail: str = ""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _expected_times(out_dir: Path, label: str) -> dict[str, float]:
    """Seconds per step name: the last check's successful steps, else recorded notebook times."""
    times: dict[str, float] = {}
    for path in sorted((ROOT / "benchmarks" / "results").glob("notebook_times-*.json"), reverse=True):
        try:
            for name, seconds in json.loads(path.read_text())["notebooks"].items():
                times.setdefault(name, float(seconds))  # "tiny-cpu" sorts after "full-cuda": full wins
        except (OSError, ValueError, KeyError):
            continue
    summary = out_dir / f"gpu_check-{label}.json"
    if summary.exists():
        try:
            for s in json.loads(summary.read_text())["steps"]:
                if s["status"] == "ok":
                    times[s["name"]] = float(s["wall_s"])
        except (OSError, ValueError, KeyError):
            pass
    return times


def plan(dry: bool, python: str, out_dir: Path, label: str) -> list[Step]:
    """The ordered steps (nothing runs)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import for_device  # the one list (no torch needed)

    base = {"MINILLM_RESULTS": str(out_dir), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
            "MINILLM_DEVICE": "cpu" if dry else "cuda", "MPLBACKEND": "Agg"}
    # One profile for every step, so the notebooks read the results the benchmarks just wrote (the same names).
    smoke = {"MINILLM_SMOKE": "1", "TRITON_INTERPRET": "1"} if dry else {}
    bench_env = {**base, "MINILLM_PROFILE": "full", **smoke}
    steps = [Step(TRITON_BENCH, "triton", [python, f"benchmarks/{TRITON_BENCH}.py"] + (["--dry-run"] if dry else []),
                  bench_env)]
    steps += [Step(b.name, "benchmark", [python, f"benchmarks/{b.name}.py"], bench_env)
              for b in for_device("cuda") if b.name != TRITON_BENCH]
    nb_env = bench_env
    times = _expected_times(out_dir, label)
    notebooks = sorted(str(p.relative_to(ROOT)) for folder in ("book", "solutions") for p in (ROOT / folder).glob("*.ipynb"))
    notebooks.sort(key=lambda nb: (nb not in times, times.get(nb, 0.0), (ROOT / nb).stat().st_size))
    steps += [Step(nb, "notebook", [python, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                                    "-q", "--no-header", nb], nb_env) for nb in notebooks]
    for s in steps:
        s.expected_s = times.get(s.name)
    return steps


def _probe(python: str, gpu: bool = True) -> dict:
    """What the interpreter can import, and (``gpu``) the device torch sees — in a child: a broken torch cannot hang
    us. The dry run skips importing torch (seconds on a loaded CPU) and reads its version from the metadata."""
    code = ("import importlib.util, importlib.metadata as md, json, platform, sys\n"
            "out = {'python': platform.python_version(), 'missing': [], 'venv': sys.prefix != sys.base_prefix}\n"
            f"for m, dist in {sorted({**NEEDED, 'triton': 'triton'}.items())!r}:\n"
            "    if importlib.util.find_spec(m) is None:\n        out['missing'].append(m)\n"
            "    else:\n        try:\n            out[m] = md.version(dist)\n"
            "        except Exception:\n            out[m] = '?'\n"
            f"if not {gpu!r} and importlib.util.find_spec('torch'):\n    out['torch'] = md.version('torch')\n"
            f"elif {gpu!r}:\n  try:\n    import torch\n    out['torch'] = torch.__version__; out['cuda'] = torch.version.cuda\n"
            "    out['cuda_available'] = torch.cuda.is_available()\n"
            "    if out['cuda_available']:\n        out['device_name'] = torch.cuda.get_device_name(0)\n"
            "  except Exception as e:\n    out['torch_error'] = repr(e)\n"
            "else:\n    out['torch_error'] = 'torch is not installed'\n"
            "print(json.dumps(out))\n")
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as err:
        return {"torch_error": f"probe failed: {err!r}", "missing": list(NEEDED)}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].split(";")[0].strip()
        if "==" in line:
            pins[line.split("==")[0].strip().lower()] = line
    return pins


def setup(args, deadline: float) -> tuple[str, dict]:
    """Pick the interpreter, install what is missing (never torch or triton), return (python, facts)."""
    venv = ROOT / ".venv" / "bin" / "python"
    candidates = [args.python] if args.python else ([str(venv)] if venv.exists() else []) + [sys.executable]
    facts: dict = {"install": []}
    seen = []
    for python in candidates:  # the first that has torch (and, for the real check, sees the GPU)
        probe = _probe(python, gpu=not args.dry_run)
        seen.append((python, probe))
        if "torch" in probe and (args.dry_run or probe.get("cuda_available")):
            break
    else:
        python, probe = next(((py, pr) for py, pr in seen if "torch" in pr), seen[-1])
    facts.update(python=python, probe=probe, candidates=[py for py, _ in seen])
    missing = [m for m in probe.get("missing", []) if m in NEEDED]
    usable = "torch" in probe and (args.dry_run or probe.get("cuda_available"))  # else main() stops at once
    if missing and not args.skip_install and usable:
        target = python
        if not probe.get("venv"):  # a system interpreter may refuse pip: a venv that sees its torch and triton
            venv_dir = ROOT / "_build" / "gpu-venv"
            if not (venv_dir / "bin" / "python").exists():
                _run_logged(facts, [python, "-m", "venv", "--system-site-packages", str(venv_dir)], 120)
            if (venv_dir / "bin" / "python").exists():
                target = str(venv_dir / "bin" / "python")
        pins = _pins()
        reqs = [pins.get(NEEDED[m].lower(), NEEDED[m]) for m in missing]
        budget = max(10.0, min(180.0, deadline - time.monotonic() - 60))
        _run_logged(facts, [target, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--retries", "1",
                            "--timeout", "15", *reqs], budget)
        after = _probe(target, gpu=not args.dry_run)
        if "torch" in after:
            python, facts["python"], facts["probe"] = target, target, after
    return python, facts


def _run_logged(facts: dict, cmd: list[str], timeout: float) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        facts["install"].append({"command": cmd, "returncode": done.returncode, "tail": done.stderr[-1500:]})
    except (OSError, subprocess.TimeoutExpired) as err:
        facts["install"].append({"command": cmd, "returncode": None, "tail": f"gave up: {err!r}"})


def _run_step(step: Step, timeout: float, folder: Path, index: int, deadline_cut: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{index:02d}-{step.name.replace('/', '_')}.log"
    step.log, step.timeout_s, step.started = str(log_path), round(timeout, 1), _now()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    env = {**os.environ, **step.env}
    if "TRITON_INTERPRET" not in step.env:
        env.pop("TRITON_INTERPRET", None)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(step.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True, errors="replace")

        def pump():
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write("   | " + line)
            sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            step.returncode = proc.wait(timeout=timeout)
            step.status = "ok" if step.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill(proc)
            step.status = "deadline" if deadline_cut else "timeout"
            step.reason = f"killed after {timeout:.0f} s ({'the deadline' if deadline_cut else 'the step cap'})"
        except KeyboardInterrupt:
            _kill(proc)
            step.status, step.reason = "interrupted", "the check was interrupted"
            raise
        finally:
            reader.join(timeout=10)
            step.wall_s = round(time.monotonic() - start, 2)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            step.cpu_s = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    step.log_tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])


def _kill(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def run_steps(steps: list[Step], deadline: float, out_dir: Path, label: str, summary: dict) -> dict:
    """Run ``steps`` in order until the deadline; write each record and the summary after every step."""
    folder, summary_path = out_dir / f"gpu_check-{label}", out_dir / f"gpu_check-{label}.json"
    summary["steps"] = [asdict(s) for s in steps]
    try:
        for i, step in enumerate(steps, 1):
            left = deadline - time.monotonic() - RESERVE
            if step.status == "skipped":  # decided before (e.g. a missing package)
                pass
            elif left < MIN_LEFT:
                step.status, step.reason = "skipped", f"the deadline: {max(left, 0):.0f} s left"
            elif step.expected_s is not None and step.expected_s > left:
                step.status, step.reason = "skipped", f"expected {step.expected_s:.0f} s, {left:.0f} s left before the deadline"
            else:
                cap = CAPS[step.kind]
                print(f"== [{i}/{len(steps)}] {step.kind} {step.name} (timeout {min(cap, left):.0f} s, "
                      f"{left:.0f} s left)", flush=True)
                before = {p: p.stat().st_mtime for p in out_dir.glob("*.json")}
                _run_step(step, min(cap, left), folder, i, deadline_cut=left < cap)
                step.results = sorted(str(p) for p in out_dir.glob("*.json")
                                      if before.get(p) != p.stat().st_mtime and not p.name.startswith("gpu_check-"))
                print(f"   {step.name}: {step.status} after {step.wall_s:.1f} s wall, {step.cpu_s:.1f} s CPU"
                      + (f" ({step.reason})" if step.reason else ""), flush=True)
            if step.status == "skipped":
                print(f"-- [{i}/{len(steps)}] skipped {step.name}: {step.reason}", flush=True)
            _write(folder / f"{i:02d}-{step.name.replace('/', '_')}.json", asdict(step))
            summary["steps"][i - 1] = asdict(step)
            _write(summary_path, _public(summary))
    except KeyboardInterrupt:
        summary["interrupted"] = True
    counts: dict[str, int] = {}
    for s in steps:
        counts[s.status] = counts.get(s.status, 0) + 1
    summary.update(steps=[asdict(s) for s in steps], counts=counts, finished=_now(),
                   wall_s=round(time.monotonic() - summary["_t0"], 1),
                   stopped_by_deadline=any(s.status in ("deadline", "skipped") and "deadline" in s.reason for s in steps))
    _write(summary_path, _public(summary))
    return summary


def _public(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def _interrupt(signum, frame):  # SIGTERM (a cancelled job) ends the check like Ctrl-C: kill the step, write the JSON
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU: interpreter, small shapes, smoke-capped loops")
    parser.add_argument("--deadline-min", type=float, default=12.0, help="stop cleanly after this many minutes")
    parser.add_argument("--deadline-s", type=float, default=None, help="the deadline in seconds (overrides minutes)")
    parser.add_argument("--out-dir", type=Path, default=None, help="results folder (default: benchmarks/results; "
                                                                   "dry run: a temporary folder)")
    parser.add_argument("--python", default=None, help="interpreter for the steps (default: .venv, else this one)")
    parser.add_argument("--skip-install", action="store_true", help="never run pip")
    parser.add_argument("--only", nargs="*", default=None, help="run only these step names (kept in plan order)")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + (args.deadline_s if args.deadline_s is not None else args.deadline_min * 60)
    label = "dryrun-cpu" if args.dry_run else "full-cuda"
    out_dir = (args.out_dir or (Path(tempfile.gettempdir()) / "minillm-gpu-check-dryrun" if args.dry_run
                                else ROOT / "benchmarks" / "results")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.list:
        for i, s in enumerate(plan(args.dry_run, args.python or sys.executable, out_dir, label), 1):
            print(f"{i:2d}. {s.kind:9s} {s.name}" + (f"  (expected {s.expected_s:.0f} s)" if s.expected_s else ""))
        return 0
    python, facts = setup(args, deadline)
    probe = facts["probe"]
    summary = {"check": "gpu_check", "dry_run": args.dry_run, "label": label, "started": _now(), "_t0": t0,
               "deadline_s": round(deadline - t0, 1), "setup_s": round(time.monotonic() - t0, 1), "out_dir": str(out_dir),
               "device": {"type": "cpu" if args.dry_run else "cuda", "name": probe.get("device_name"),
                          "cuda_available": probe.get("cuda_available")},
               "versions": {k: probe.get(k) for k in ("python", "torch", "cuda", "triton")}, "setup": facts,
               "nvidia_smi": _nvidia_smi(), "cache": os.environ.get("MINILLM_CACHE", "~/.cache/minillm")}
    steps = plan(args.dry_run, python, out_dir, label)
    if args.only is not None:
        steps = [s for s in steps if s.name in args.only]
    summary_path = out_dir / f"gpu_check-{label}.json"
    if "torch" not in probe:
        summary.update(status="no-torch", steps=[asdict(s) for s in steps])
        _write(summary_path, _public(summary))
        print(f"no usable torch in {python}: {probe.get('torch_error')}; install the course's requirements", file=sys.stderr)
        return 2
    if not args.dry_run and not probe.get("cuda_available"):
        summary.update(status="no-gpu", steps=[asdict(s) for s in steps])
        _write(summary_path, _public(summary))
        print("no CUDA GPU visible to PyTorch: run the GPU check on a GPU machine, or rehearse it here with --dry-run",
              file=sys.stderr)
        return 2
    missing = set(probe.get("missing", []))
    for s in steps:  # steps that cannot start are skipped at once, with the reason
        lacking = sorted(missing & ({"triton"} if s.kind == "triton" else set(NOTEBOOK_MODULES) if s.kind == "notebook"
                                    else set()))
        if lacking:
            s.status, s.reason = "skipped", f"missing packages: {', '.join(lacking)}"
    print(f"GPU check ({label}): {len(steps)} steps, deadline {deadline - t0:.0f} s, device "
          f"{summary['device']['name'] or 'cpu'}, torch {probe.get('torch')}, triton {probe.get('triton')}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    summary = run_steps(steps, deadline, out_dir, label, summary)
    print(f"GPU check: {summary['counts']} in {summary['wall_s']:.0f} s; summary {summary_path}", flush=True)
    return 130 if summary.get("interrupted") else (0 if all(s.status == "ok" for s in steps) else 1)


def _nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return done.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


if __name__ == "__main__":
    sys.exit(main())
