"""Study: LoRA versus full fine-tuning of SmolLM2-135M (a Llama-architecture decoder) on a structured-output
generation task, scored by exact match — the chapter's decoder experiment, sized for a CPU.

The task (minillm.lora.decoder): turn a movie-review sentence into ``review(sentiment[...], aspects[...])``.
SmolLM2's linear weights are stored 4-bit (GGUF Q4_1) in the package it comes from; the float32 model trained
here is that file dequantized. Settings: full fine-tuning at 3e-5 and 1e-4, LoRA (r=8, alpha=16, all linear
layers) at 1e-4 and 1e-3, 30 steps of 8 sentences, one seed (the machine it ran on was shared: see the note
in the JSON); the test set's examples are paired between methods. Per run: validation / test
exact match, the training curve (loss, gradient norm), throughput and CPU time; per method: trainable
parameters, training state, the activations one step saves, and the checkpoint each method stores.

    python studies/ch03_decoder.py              # about 9 min CPU
    python studies/ch03_decoder.py --quick --out /tmp/x   # a tiny random Llama with SmolLM2's tokenizer: the test's version

Writes ``studies/results/ch03_decoder-<profile>-<device>.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    profile = current_profile()
    cfg = profile.pick(DECODER_FINETUNE_TINY, DECODER_FINETUNE_FULL)
    if args.quick:
        cfg = dataclasses.replace(smoke_capped(cfg), max_steps=2, train_examples=16, val_examples=8, test_examples=8)
    t0, c0 = time.perf_counter(), time.process_time()
    base, tokenizer = load_model(args.quick)
    load_s = time.perf_counter() - t0
    pad = tokenizer.eos_token_id
    runs, per_method, zero_shot, tasks = [], {}, {}, {}
    for seed in range(args.seeds):
        task = build_generation_task(tokenizer, dataclasses.replace(cfg, seed=seed))
        tasks[str(seed)] = {"train": len(task.train), "val": len(task.val), "test": len(task.test),
                            "dropped_long": task.dropped,
                            "mean_tokens": statistics.fmean(len(e.prompt_ids) + len(e.target_ids) for e in task.train)}
        zero_shot[str(seed)] = exact_match(base, task.test, pad).accuracy
        for method, lr in SETTINGS:
            model = copy.deepcopy(base)
            if method == "lora":
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    inject_lora(model, DECODER_LORA)
            state = training_state_bytes(model).as_dict()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                log = finetune_causal_lm(model, task.train, dataclasses.replace(cfg, seed=seed), lr, pad, progress=False)
            val, test = exact_match(model, task.val, pad), exact_match(model, task.test, pad)
            report = trainable_report(model)
            run = {"method": method, "lr": lr, "seed": seed, "label": f"{method}-lr{lr:.1e}",
                   "val_exact_match": val.accuracy, "test_exact_match": test.accuracy,
                   "test_correct": "".join("1" if c else "0" for c in test.correct.tolist()),
                   "val_loss": val.loss, "test_loss": test.loss, "loss": log.loss, "grad_norm": log.grad_norm,
                   "trainable": report.trainable, "total": report.total, "training_state_bytes": state,
                   "tokens_per_s": log.tokens_per_second, "examples_per_s": log.examples_per_second,
                   "train_wall_s": log.wall_seconds, "train_cpu_s": log.cpu_seconds}
            runs.append(run)
            print(f"seed {seed} {run['label']:14s} val EM {val.accuracy:.3f} test EM {test.accuracy:.3f} "
                  f"max loss {max(log.loss):.2f} ({log.cpu_seconds:.0f} s CPU)", flush=True)
            if seed == 0 and method not in per_method:
                per_method[method] = measure_costs(model, task, pad, method)
            if seed == 0 and method == "lora" and lr == max(lr for m, lr in SETTINGS if m == "lora"):
                per_method["lora"]["greedy_check"] = greedy_agrees(model, tokenizer, task.test[:4],
                                                                   test.correct[:4].tolist())
            del model
    results = {"study": NAME, "profile": profile.name, "quick": args.quick, "config": dataclasses.asdict(cfg),
               "model": "tiny random Llama (quick check)" if args.quick else
               "SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to float32",
               "lora": dataclasses.asdict(DECODER_LORA), "settings": [list(s) for s in SETTINGS],
               "seeds": list(range(args.seeds)), "tasks": tasks, "zero_shot_test_exact_match": zero_shot,
               "runs": runs, "per_method": per_method, "threads": args.threads, "load_s": load_s,
               "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
               "note": "timings measured on a shared machine under load (other jobs running)"}
    path = write_results(results_path(NAME, profile.name, "cpu", args.out or RESULTS), results, "cpu")
    print(f"wrote {path} ({results['cpu_s'] / 60:.1f} min CPU)")
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
