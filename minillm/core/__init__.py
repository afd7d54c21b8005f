"""The foundation every chapter builds on.

* :mod:`~minillm.core.profile` — the tiny/full switch, the smoke switch, the one preset selector ``pick``;
* :mod:`~minillm.core.runtime` — seeding, device choice, what a result was measured on;
* :mod:`~minillm.core.notebook` — a chapter's first cell;
* :mod:`~minillm.core.training` — AdamW, the learning-rate schedule, the step loop;
* :mod:`~minillm.core.evaluation` — evaluation mode, classifier accuracy;
* :mod:`~minillm.core.memory` — training state and saved activations, in bytes;
* :mod:`~minillm.core.claims` — several seeds, confidence intervals, claims asserted on them;
* :mod:`~minillm.core.tracking` — mlflow in a local store; :mod:`~minillm.core.bench` — timing and JSON results;
* :mod:`~minillm.core.checkpoint` — safetensors; :mod:`~minillm.core.offline` — the checksummed data cache;
* :mod:`~minillm.core.paths` — where the checkout, its results and its mlflow store are.
"""
