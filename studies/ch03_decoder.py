"""Study: LoRA versus full fine-tuning of SmolLM2-135M (a Llama-architecture decoder) on a structured-output
generation task, scored by exact match — the chapter's decoder experiment, sized for a CPU.

The task (minillm.lora.decoder): turn a movie-review sentence into ``review(sentiment[...], aspects[...])``.
SmolLM2's linear weights are stored 4-bit (GGUF Q4_1) in the package it comes from; the float32 model trained
here is that file dequantized. Settings: full fine-tuning at 3e-5 and 1e-4, LoRA (r=8, alpha=16, all linear
layers) at 1e-4 and 1e-3, 30 steps of 8 sentences, one seed (the machine it ran on was shared: see the note
in the JSON); the test set's examples are paired between methods. Per run: validation / test
exact match, the training curve (loss, gradient norm), throughput and CPU time; per method: trainable
parameters, training state, the activations one step saves, and the checkpoint each method stores.

    python studies/ch03_decoder.py --jobs 2     # about 9 min CPU in all
    python studies/ch03_decoder.py --quick --out /tmp/x   # a tiny random Llama with SmolLM2's tokenizer: the test's version

Writes ``studies/results/ch03_decoder-<profile>-<device>.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from safetensors.torch import save_model  # noqa: E402

from minillm.core.bench import results_path, write_results  # noqa: E402
from minillm.core.memory import saved_activation_bytes, training_state_bytes  # noqa: E402
from minillm.core.profile import current_profile, smoke_capped  # noqa: E402
from minillm.lora import LoRAConfig, inject_lora, save_adapter, trainable_report  # noqa: E402
from minillm.lora.decoder import (DECODER_FINETUNE_FULL, DECODER_FINETUNE_TINY, build_generation_task,  # noqa: E402
                                  collate_generation, exact_match, finetune_causal_lm)


def own_session() -> None:
    """Start each worker in its own session: on Linux with autogroup scheduling, the CPU is shared between
    sessions, so workers that stay in their parent's session would split one share between them."""
    try:
        os.setsid()
    except OSError:
        pass


NAME = "ch03_decoder"
RESULTS = ROOT / "studies" / "results"
SETTINGS = (("full", 3e-5), ("full", 1e-4), ("lora", 1e-4), ("lora", 1e-3))
DECODER_LORA = LoRAConfig(r=8, alpha=16.0, dropout=0.05, target_modules="all-linear", modules_to_save=())


def load_model(quick: bool):
    """SmolLM2-135M (``--quick``: a 2-layer random Llama of the same vocabulary) and SmolLM2's tokenizer."""
    if not quick:
        from minillm.pretrained import load_smollm2

        return load_smollm2()
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from minillm.pretrained import smollm2_gguf
    from minillm.pretrained.minilm import quiet_transformers

    gguf = smollm2_gguf()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval(), tokenizer


def greedy_agrees(model, tokenizer, examples, hits) -> list[dict]:
    """``generate`` (greedy) on a few examples: does it reproduce the target exactly when exact_match says so?"""
    out = []
    for example, hit in zip(examples, hits):
        prompt = torch.tensor([example.prompt_ids])
        with torch.no_grad():
            ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=len(example.target_ids) + 2, pad_token_id=tokenizer.eos_token_id)
        new = ids[0, prompt.shape[1]:].tolist()
        generated_exact = new[:len(example.target_ids)] == example.target_ids
        out.append({"text": example.text, "target": example.target,
                    "generated": tokenizer.decode(new, skip_special_tokens=True).strip(),
                    "exact_match": bool(hit), "generate_reproduces_target": generated_exact})
    return out


_MODEL: dict[bool, tuple] = {}  # quick -> (model, tokenizer), loaded once per worker process


def run_setting(task: tuple) -> dict:
    """One (method, lr, seed) run in a worker process; optionally the zero-shot score, the costs and a greedy check."""
    method, lr, seed, cfg, quick, threads, extras = task
    torch.set_num_threads(threads)
    if quick not in _MODEL:
        _MODEL[quick] = load_model(quick)
    base, tokenizer = _MODEL[quick]
    pad = tokenizer.eos_token_id
    cfg = dataclasses.replace(cfg, seed=seed)
    task_data = build_generation_task(tokenizer, cfg)
    out = {"task": {"train": len(task_data.train), "val": len(task_data.val), "test": len(task_data.test),
                    "dropped_long": task_data.dropped,
                    "mean_tokens": statistics.fmean(len(e.prompt_ids) + len(e.target_ids) for e in task_data.train)}}
    if "zero_shot" in extras:
        out["zero_shot"] = exact_match(base, task_data.test, pad).accuracy
    model = copy.deepcopy(base)
    if method == "lora":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inject_lora(model, DECODER_LORA)
    state = training_state_bytes(model).as_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        log = finetune_causal_lm(model, task_data.train, cfg, lr, pad, progress=False)
    val, test = exact_match(model, task_data.val, pad), exact_match(model, task_data.test, pad)
    report = trainable_report(model)
    out["run"] = {"method": method, "lr": lr, "seed": seed, "label": f"{method}-lr{lr:.1e}",
                  "val_exact_match": val.accuracy, "test_exact_match": test.accuracy,
                  "test_correct": "".join("1" if c else "0" for c in test.correct.tolist()),
                  "val_loss": val.loss, "test_loss": test.loss, "loss": log.loss, "grad_norm": log.grad_norm,
                  "trainable": report.trainable, "total": report.total, "training_state_bytes": state,
                  "tokens_per_s": log.tokens_per_second, "examples_per_s": log.examples_per_second,
                  "train_wall_s": log.wall_seconds, "train_cpu_s": log.cpu_seconds}
    print(f"seed {seed} {out['run']['label']:14s} val EM {val.accuracy:.3f} test EM {test.accuracy:.3f} "
          f"max loss {max(log.loss):.2f} ({log.cpu_seconds:.0f} s CPU)", flush=True)
    if "costs" in extras:
        out["costs"] = measure_costs(model, task_data, pad, method)
    if "greedy" in extras:
        out["greedy_check"] = greedy_agrees(model, tokenizer, task_data.test[:4], test.correct[:4].tolist())
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (worker processes, one model each)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    profile = current_profile()
    cfg = profile.pick(DECODER_FINETUNE_TINY, DECODER_FINETUNE_FULL)
    if args.quick:
        cfg = dataclasses.replace(smoke_capped(cfg), max_steps=2, train_examples=16, val_examples=8, test_examples=8)
    t0 = time.perf_counter()
    lora_max = max(lr for m, lr in SETTINGS if m == "lora")
    tasks = []
    for seed in range(args.seeds):
        for i, (method, lr) in enumerate(SETTINGS):
            first_of_method = (method, lr) == next(s for s in SETTINGS if s[0] == method)
            extras = ({"zero_shot"} if i == 0 else set()) | ({"costs"} if seed == 0 and first_of_method else set()) \
                | ({"greedy"} if seed == 0 and method == "lora" and lr == lora_max else set())
            tasks.append((method, lr, seed, cfg, args.quick, args.threads, extras))
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs, initializer=own_session) as pool:
            outs = pool.map(run_setting, tasks, chunksize=1)
    else:
        outs = [run_setting(t) for t in tasks]
    runs = [o["run"] for o in outs]
    per_method = {o["run"]["method"]: o["costs"] for o in outs if "costs" in o}
    per_method["lora"]["greedy_check"] = next(o["greedy_check"] for o in outs if "greedy_check" in o)
    results = {"study": NAME, "profile": profile.name, "quick": args.quick, "config": dataclasses.asdict(cfg),
               "model": "tiny random Llama (quick check)" if args.quick else
               "SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to float32",
               "lora": dataclasses.asdict(DECODER_LORA), "settings": [list(s) for s in SETTINGS],
               "seeds": list(range(args.seeds)),
               "tasks": {str(o["run"]["seed"]): o["task"] for o in outs},
               "zero_shot_test_exact_match": {str(o["run"]["seed"]): o["zero_shot"] for o in outs if "zero_shot" in o},
               "runs": runs, "per_method": per_method, "threads": args.threads, "jobs": args.jobs,
               "wall_s": time.perf_counter() - t0, "cpu_s": sum(r["train_cpu_s"] for r in runs),
               "note": "timings measured on a shared machine under load (other jobs running); cpu_s sums the "
                       "training loops"}
    path = write_results(results_path(NAME, profile.name, "cpu", args.out or RESULTS), results, "cpu")
    print(f"wrote {path} ({results['cpu_s'] / 60:.1f} min CPU in the training loops)")
    return path


def measure_costs(model, task, pad: int, method: str) -> dict:
    """Activations one training step saves, and the file this method must keep (written and measured on disk)."""
    batch = collate_generation(task.train[:8], pad)
    model.train()
    activations = saved_activation_bytes(model, lambda: model(**batch).loss)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.safetensors"
        if method == "lora":
            save_adapter(model, path)
        else:
            save_model(model, str(path))
        size = path.stat().st_size
    return {"saved_activation_bytes": activations, "activation_batch": list(batch["input_ids"].shape),
            "checkpoint_bytes": size}


if __name__ == "__main__":
    main()
