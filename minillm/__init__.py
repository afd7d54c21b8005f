"""minillm: modern LLM techniques built from scratch, one small tested module per idea.

Foundation (every chapter): ``profile`` (the tiny/full switch), ``runtime`` (seeding, device),
``offline`` (checksummed data cache), ``notebook`` (chapter set-up), ``bench`` (timing, JSON results),
``tracking`` (mlflow), ``train`` (training loop), ``checkpoint`` (safetensors).

* Chapter 1: ``shakespeare``, ``tokenizer``, ``batching`` (data); ``attention``, ``kv_cache``, ``gpt``,
  ``generation`` (model and decoding).
* Chapter 2: ``moe``, ``moe_experts``, ``moe_dispatch``, ``moe_lm`` (sparse mixture-of-experts).
* Chapter 3: ``lora``, ``lora_model``, ``lora_finetune`` (LoRA); ``pretrained``, ``sentiment`` (MiniLM, reviews).
* Chapter 4: ``accumulation``, ``finetune`` (gradient accumulation, the BLOOM classifier path).
* Chapter 5: ``quant`` (quantizer, Hessian, RTN, OBQ, GPTQ, packing, Triton kernel), ``minilm``.
* Chapter 6: ``prune`` (reparameterisation, UPDP blocks, supernet, search, progressive training).
"""

__version__ = "0.1.0"
