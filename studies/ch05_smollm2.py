"""GPTQ vs round-to-nearest on SmolLM2-135M: perplexity on held-out Shakespeare at 4 and 3 bits (chapter 5).

Every linear of the 30 decoder layers is quantized (embeddings and the tied head stay as loaded), layer by layer,
each layer calibrated on the outputs of the quantized layers before it (:func:`minillm.quant.llama.quantize_decoder`).
Calibration: ``--calib-windows`` random 256-token windows of eight other plays (seeded); evaluation: the first
``--eval-windows`` non-overlapping 256-token windows of the held-out text. The baseline "fp" is the loaded model:
its linears are stored Q4_1 and dequantized to float32 on load. Runs, in order of value:

1. fp, RTN per channel at 4 and 3 bits;
2. GPTQ per channel with act-order at 4 and 3 bits, one run per calibration seed (the headline interval);
3. groups of 64 (576 = 9 × 64 inputs) for RTN and GPTQ, RTN with groups of 32 (the file's own Q4_1 layout),
   GPTQ without act-order (one seed each).

Writes ``studies/results/ch05_smollm2-<profile>-<device>.json`` after every run (``--resume`` keeps them), with the
per-window NLLs, wall and CPU seconds, and how well two grids reproduce the stored Q4_1 weights.

    .venv/bin/python studies/ch05_smollm2.py            # ~15-20 min of CPU at 1 thread on an idle machine
    .venv/bin/python studies/ch05_smollm2.py --quick    # a random 2-layer Llama over bytes: the pipeline only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from minillm.core.bench import results_path, write_results
from minillm.core.paths import project_root
from minillm.core.profile import current_profile
from minillm.quant.calibrate import QuantConfig, linear_layers
from minillm.quant.llama import (calibration_text, consecutive_windows, heldout_text, perplexity, q4_1_reproduction,
                                 quantize_decoder, random_windows, window_nll)

NAME = "ch05_smollm2"
CTX = 256


def results_file(results_dir: Path | None = None) -> Path:
    folder = results_dir if results_dir is not None else (project_root() or Path.cwd()) / "studies" / "results"
    return results_path(NAME, current_profile().name, "cpu", folder)


def plan(seeds: list[int]) -> list[dict]:
    """(method, bits, groupsize, actorder, seed) of every run, most valuable first."""
    runs = [dict(method="fp"), dict(method="rtn", bits=4, groupsize=-1), dict(method="rtn", bits=3, groupsize=-1)]
    for seed in seeds:
        runs += [dict(method="gptq", bits=b, groupsize=-1, actorder=True, seed=seed) for b in (4, 3)]
    runs += [dict(method="rtn", bits=b, groupsize=64) for b in (4, 3)] + [dict(method="rtn", bits=4, groupsize=32)]
    runs += [dict(method="gptq", bits=b, groupsize=64, actorder=True, seed=seeds[0]) for b in (4, 3)]
    runs += [dict(method="gptq", bits=b, groupsize=-1, actorder=False, seed=seeds[0]) for b in (4, 3)]
    return runs


def _quick_model():
    """A random 2-layer Llama over bytes, and its byte 'tokenizer' (for --quick: checks the pipeline only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).eval()

    def encode(text: str) -> torch.Tensor:
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    return model, encode


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--ctx", type=int, default=CTX)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many runs of the plan")
    parser.add_argument("--quick", action="store_true", help="random 2-layer Llama over bytes: proves nothing")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="keep the runs an earlier, interrupted call wrote")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.quick:
        model, encode = _quick_model()
        model_name = "random 2-layer Llama over bytes (--quick)"
    else:
        from minillm.pretrained import load_smollm2

        model, tokenizer = load_smollm2()

        def encode(text: str) -> torch.Tensor:
            return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        model_name = "SmolLM2-135M-Instruct (Q4_1 file, dequantized to float32)"
    load_s = time.perf_counter() - t0
    evaluation = consecutive_windows(encode(heldout_text()), args.eval_windows, args.ctx)   # (n_eval, ctx)
    pool = encode(calibration_text())                                                       # (n_tokens,)
    fp_weights = {f"{b}.{n}": m.weight.data.clone() for b, blk in enumerate(model.model.layers)
                  for n, m in linear_layers(blk).items()}
    settings = {"model": model_name, "calib_windows": args.calib_windows, "eval_windows": args.eval_windows,
                "ctx": args.ctx, "seeds": args.seeds, "threads": args.threads, "calib_tokens_pool": pool.numel(),
                "percdamp": 0.01, "blocksize": 128, "sym": False}
    path = results_file(args.results_dir)
    runs: list[dict] = []
    if args.resume and path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") == settings:
            runs = old["runs"]
            print(f"resuming: {len(runs)} runs already in {path}", flush=True)
    q41 = {}
    for name in ("0.self_attn.q_proj", "0.mlp.down_proj", f"{len(model.model.layers) - 1}.mlp.gate_proj"):
        q41[name] = q4_1_reproduction(fp_weights[name], 32)

    totals: dict = {}

    def save(complete: bool) -> None:
        write_results(path, {"settings": settings, "load_seconds": load_s, "q4_1": q41, "complete": complete,
                             "totals": totals, "runs": runs}, "cpu")

    todo = plan(args.seeds)[: args.max_runs]
    done = {json.dumps(r["spec"], sort_keys=True) for r in runs}
    for spec in todo:
        if json.dumps(spec, sort_keys=True) in done:
            continue
        for b, blk in enumerate(model.model.layers):
            for n, m in linear_layers(blk).items():
                m.weight.data.copy_(fp_weights[f"{b}.{n}"])
        w0, cpu0 = time.perf_counter(), time.process_time()
        record: dict = {"spec": spec}
        if spec["method"] != "fp":
            cfg = QuantConfig(method=spec["method"], bits=spec["bits"], groupsize=spec["groupsize"],
                              actorder=spec.get("actorder", False), percdamp=0.01, blocksize=128)
            calib = (random_windows(pool, args.calib_windows, args.ctx, spec["seed"]) if spec["method"] == "gptq"
                     else None)
            report = quantize_decoder(model, calib, cfg)
            record["layer_error_sum"] = sum(report.errors.values()) if report.errors else None
            record["retries"] = getattr(report, "retries", {})
        record["quant_seconds"] = time.perf_counter() - w0
        record["quant_cpu_seconds"] = time.process_time() - cpu0
        w1 = time.perf_counter()
        nll = window_nll(model, evaluation)
        record.update(ppl=perplexity(nll, args.ctx), window_nll=nll, eval_seconds=time.perf_counter() - w1)
        runs.append(record)
        save(False)
        print(f"[{time.perf_counter() - t0:6.0f} s] {spec}: ppl {record['ppl']:.2f} "
              f"(quant {record['quant_seconds']:.0f} s, eval {record['eval_seconds']:.0f} s)", flush=True)
    totals.update(wall_seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
    save(len(runs) >= len(todo))
    return path


if __name__ == "__main__":
    main()
