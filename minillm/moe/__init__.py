"""Chapter 2 — makeMoE: a sparse mixture-of-experts language model.

Experts and their stacked storage, (noisy) top-k routers with Switch load balancing and the ST-MoE z-loss,
expert capacity, four dispatch strategies held equal to a dense reference, the MoE language model with a KV
cache, its dense baselines, routing statistics, and the claims the chapter asserts over seeds.

Modules: :mod:`~minillm.moe.router`, :mod:`~minillm.moe.experts`, :mod:`~minillm.moe.dispatch`,
:mod:`~minillm.moe.layer`, :mod:`~minillm.moe.config`, :mod:`~minillm.moe.init`, :mod:`~minillm.moe.model`,
:mod:`~minillm.moe.monitoring`, :mod:`~minillm.moe.claims`.
"""

from minillm.moe.config import (MOE_PRESETS, MOE_TRAIN_FULL, MOE_TRAIN_TINY, MoEConfig, dense_baseline,
                                moe_config)
from minillm.moe.dispatch import (DISPATCH_NAMES, DispatchName, capacity_keep_mask, dispatch, dispatch_batched,
                                  dispatch_dense, dispatch_masked_loop, dispatch_sorted, expert_capacity, gate_matrix,
                                  rank_within_expert)
from minillm.moe.experts import Expert, ExpertBank, activation_fn
from minillm.moe.init import init_weights
from minillm.moe.layer import MoEStats, SparseMoE
from minillm.moe.model import DenseMLP, MoEBlock, MoELM
from minillm.moe.monitoring import expert_load, load_callback, load_history, routing_by_token
from minillm.moe.router import (NoisyTopkRouter, Routing, TopkRouter, expert_fractions, load_balancing_loss,
                                router_z_loss)

__all__ = [
    "MOE_PRESETS", "MOE_TRAIN_FULL", "MOE_TRAIN_TINY", "MoEConfig", "dense_baseline", "moe_config",
    "DISPATCH_NAMES", "DispatchName", "capacity_keep_mask", "dispatch", "dispatch_batched", "dispatch_dense",
    "dispatch_masked_loop", "dispatch_sorted", "expert_capacity", "gate_matrix", "rank_within_expert", "Expert",
    "ExpertBank", "activation_fn", "init_weights", "MoEStats", "SparseMoE", "DenseMLP", "MoEBlock", "MoELM",
    "expert_load", "load_callback", "load_history", "routing_by_token", "NoisyTopkRouter", "Routing", "TopkRouter",
    "expert_fractions", "load_balancing_loss", "router_z_loss",
]
