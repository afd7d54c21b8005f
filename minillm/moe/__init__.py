"""Chapter 2 — makeMoE: a sparse mixture-of-experts language model.

Experts and their stacked storage, (noisy) top-k routers with Switch load balancing and the ST-MoE z-loss,
expert capacity, four dispatch strategies held equal to a dense reference, and the MoE language model.

Modules: :mod:`~minillm.moe.router`, :mod:`~minillm.moe.experts`, :mod:`~minillm.moe.dispatch`,
:mod:`~minillm.moe.layer`, :mod:`~minillm.moe.model`, :mod:`~minillm.moe.monitoring`.
"""

from minillm.moe.dispatch import (DISPATCH_NAMES, DispatchName, capacity_keep_mask, dispatch, dispatch_batched,
                                  dispatch_dense, dispatch_masked_loop, dispatch_sorted, expert_capacity, gate_matrix,
                                  rank_within_expert)
from minillm.moe.experts import Expert, ExpertBank
from minillm.moe.layer import MoEStats, SparseMoE
from minillm.moe.model import MOE_PRESETS, MoEBlock, MoEConfig, MoELM, init_weights, moe_config
from minillm.moe.monitoring import expert_load, load_callback, load_history
from minillm.moe.router import (NoisyTopkRouter, Routing, TopkRouter, expert_fractions, load_balancing_loss,
                                router_z_loss)

__all__ = [
    "DISPATCH_NAMES", "DispatchName", "capacity_keep_mask", "dispatch", "dispatch_batched", "dispatch_dense",
    "dispatch_masked_loop", "dispatch_sorted", "expert_capacity", "gate_matrix", "rank_within_expert", "Expert",
    "ExpertBank", "MoEStats", "SparseMoE", "MOE_PRESETS", "MoEBlock", "MoEConfig", "MoELM", "init_weights",
    "moe_config", "expert_load", "load_callback", "load_history", "NoisyTopkRouter", "Routing", "TopkRouter",
    "expert_fractions", "load_balancing_loss", "router_z_loss",
]
