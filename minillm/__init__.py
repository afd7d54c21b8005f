"""minillm: modern LLM techniques built from scratch, one small tested module per idea.

Foundation (every chapter): ``profile`` (the tiny/full switch), ``runtime`` (seeding, device), ``offline`` (checksummed data cache),
``notebook`` (chapter set-up), ``bench`` (timing, JSON results), ``tracking`` (mlflow),
``train`` (training loop), ``checkpoint`` (safetensors).

Chapter 1: ``shakespeare``, ``tokenizer``, ``batching`` (data); ``attention``, ``kv_cache``,
``gpt``, ``generation`` (model and decoding).
"""

__version__ = "0.1.0"
