"""minillm: modern LLM techniques built from scratch, one small tested module per idea.

``ls minillm`` is the course's table of contents:

* ``core/`` — the foundation: profile and smoke switch, runtime, notebook set-up, the training core (AdamW,
  schedule, step loop), evaluation, memory accounting, claims with confidence intervals, tracking, benchmark
  I/O, checkpoints, the offline cache;
* ``data/`` — Shakespeare, movie reviews and images, tokenized and batched; ``pretrained/`` — MiniLM,
  SmolLM2-135M and BLOOM's classifier, all offline;
* ``gpt/`` — chapter 1: causal self-attention, a small GPT, sampling, the KV cache;
* ``moe/`` — chapter 2: makeMoE, a sparse mixture-of-experts language model;
* ``lora/`` — chapter 3: LoRA versus full fine-tuning;
* ``accumulation/`` — chapter 4: gradient accumulation;
* ``quant/`` — chapter 5: OBQ → GPTQ, packing, a Triton low-bit matmul;
* ``prune/`` — chapter 6: UPDP depth pruning and reparameterisation.

Each chapter's subpackage re-exports its public API from its ``__init__``.
"""

__version__ = "0.1.0"
