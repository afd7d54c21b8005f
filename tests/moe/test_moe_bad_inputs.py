"""Bad inputs to minillm.moe fail early, naming the problem and the fix (the catalogue's chapter-2 part)."""

from __future__ import annotations

import torch

from bad_inputs import BadInput, cases_param, check_case
from minillm.moe import (Expert, ExpertBank, MoEConfig, MoELM, NoisyTopkRouter, SparseMoE, TopkRouter,
                         activation_fn, capacity_keep_mask, dense_baseline, dispatch, dispatch_batched,
                         dispatch_dense, dispatch_masked_loop, dispatch_sorted, expert_capacity, expert_fractions,
                         expert_load, gate_matrix, init_weights, load_balancing_loss, load_callback, load_history,
                         moe_config, rank_within_expert, router_z_loss, routing_by_token)
from minillm.moe.model import DenseMLP, MoEBlock

C, E, K = 8, 4, 2
X = torch.randn(6, C)
IDX = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 3]])
GATES = torch.full((6, K), 0.5)
EXPERTS = torch.nn.ModuleList(Expert(C, 16) for _ in range(E))
BANK = ExpertBank(E, C, 16)
CFG = MoEConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=C, n_experts=E)
MODEL = MoELM(CFG)
DENSE = MoELM(dense_baseline(CFG, "active"))

CASES = [
    BadInput("minillm.moe.MoEConfig", "n_embd not divisible by n_head",
             lambda: MoEConfig(n_embd=10, n_head=4), ValueError, "divisible by n_head.*divisors of n_embd"),
    BadInput("minillm.moe.MoEConfig", "top_k larger than n_experts",
             lambda: MoEConfig(n_experts=4, top_k=5), ValueError, r"top_k=5 must be in \[1, n_experts=4\]"),
    BadInput("minillm.moe.MoEConfig", "an unknown initialisation",
             lambda: MoEConfig(init="he"), ValueError, "init must be one of"),
    BadInput("minillm.moe.MoEConfig", "a capacity factor of 0",
             lambda: MoEConfig(capacity_factor=0.0), ValueError, "capacity_factor must be > 0 or None.*1.25"),
    BadInput("minillm.moe.moe_config", "an unknown preset",
             lambda: moe_config("moe-huge", 65), ValueError, "unknown MoE preset 'moe-huge'; choose one of"),
    BadInput("minillm.moe.moe_config", "an override naming no field",
             lambda: moe_config("moe-tiny", 65, experts=4), ValueError, r"no field\(s\) \['experts'\]; choose among"),
    BadInput("minillm.moe.dense_baseline", "an unknown match rule",
             lambda: dense_baseline(CFG, "flops"), ValueError, "match must be 'active'.*or 'total'"),
    BadInput("minillm.moe.dense_baseline", "a config that is already dense",
             lambda: dense_baseline(dense_baseline(CFG, "total"), "active"), ValueError,
             "needs a MoE config.*moe_config"),
    BadInput("minillm.moe.activation_fn", "an unknown activation",
             lambda: activation_fn("swish"), ValueError, "activation must be one of.*'relu'"),
    BadInput("minillm.moe.Expert", "a hidden width of 0",
             lambda: Expert(C, 0), ValueError, "hidden must be a positive integer"),
    BadInput("minillm.moe.ExpertBank", "an expert index beyond the bank",
             lambda: BANK[E], IndexError, r"out of range.*integer in \[0, 4\)"),
    BadInput("minillm.moe.ExpertBank", "slots of the wrong number of experts",
             lambda: BANK(torch.randn(E + 1, 3, C)), ValueError, r"expected slots of shape \(4, S, 8\).*row e"),
    BadInput("minillm.moe.ExpertBank", "stacking something that is not an Expert",
             lambda: ExpertBank.from_experts([torch.nn.Linear(C, C)]), TypeError, "list of Expert modules.*Expert\\("),
    BadInput("minillm.moe.TopkRouter", "top_k larger than n_experts",
             lambda: TopkRouter(C, E, E + 1), ValueError, "top_k must be in.*lower top_k or add experts"),
    BadInput("minillm.moe.TopkRouter", "an unflattened (B, T, C) input",
             lambda: TopkRouter(C, E, K)(X.view(2, 3, C)), ValueError, r"flattened tokens \(N, 8\).*reshape"),
    BadInput("minillm.moe.NoisyTopkRouter", "0 experts",
             lambda: NoisyTopkRouter(C, 0, 1), ValueError, "n_experts must be a positive integer"),
    BadInput("minillm.moe.expert_fractions", "expert ids beyond n_experts",
             lambda: expert_fractions(IDX + E, E), ValueError, r"must lie in \[0, 4\).*router's number of experts"),
    BadInput("minillm.moe.load_balancing_loss", "integer probabilities",
             lambda: load_balancing_loss(torch.ones(6, E, dtype=torch.long), IDX), ValueError,
             "float \\(N, E\\) matrix.*Routing.probs"),
    BadInput("minillm.moe.load_balancing_loss", "expert ids for other tokens",
             lambda: load_balancing_loss(torch.rand(5, E), IDX), ValueError, r"expert_idx must be \(N=5, k\).*same tokens"),
    BadInput("minillm.moe.router_z_loss", "a 1-D logit vector",
             lambda: router_z_loss(torch.randn(E)), ValueError, "float \\(N, E\\) matrix.*Routing.logits"),
    BadInput("minillm.moe.expert_capacity", "a capacity factor of 0",
             lambda: expert_capacity(16, 2, 4, 0.0), ValueError, "capacity_factor must be > 0.*None for no limit"),
    BadInput("minillm.moe.expert_capacity", "a fractional token count",
             lambda: expert_capacity(16.5, 2, 4, 1.25), ValueError, "n_tokens must be a positive integer.*count"),
    BadInput("minillm.moe.rank_within_expert", "float expert ids",
             lambda: rank_within_expert(torch.rand(6), E), ValueError, "1-D integer tensor of expert ids.*reshape"),
    BadInput("minillm.moe.capacity_keep_mask", "a flat (N·k,) list of choices",
             lambda: capacity_keep_mask(IDX.reshape(-1), E, 3), ValueError, r"\(N, k\) expert ids.*Routing.expert_idx"),
    BadInput("minillm.moe.capacity_keep_mask", "a capacity of 0",
             lambda: capacity_keep_mask(IDX, E, 0), ValueError, "capacity must be a positive.*expert_capacity"),
    BadInput("minillm.moe.gate_matrix", "gates of another shape than the choices",
             lambda: gate_matrix(IDX, GATES[:, :1], E), ValueError, r"gates must have the shape of expert_idx.*Routing"),
    BadInput("minillm.moe.dispatch", "an unknown strategy",
             lambda: dispatch("fast", X, EXPERTS, IDX, GATES), ValueError, "unknown dispatch 'fast'; choose one of"),
    BadInput("minillm.moe.dispatch_dense", "(B, T, C) tokens",
             lambda: dispatch_dense(X.view(2, 3, C), EXPERTS, IDX, GATES), ValueError,
             r"flattened float tokens of shape \(N, C\).*view\(-1, C\)"),
    BadInput("minillm.moe.dispatch_masked_loop", "gates for fewer tokens",
             lambda: dispatch_masked_loop(X, EXPERTS, IDX, GATES[:3]), ValueError,
             r"expert_idx and gates must both be \(N=6, k\).*Routing"),
    BadInput("minillm.moe.dispatch_sorted", "expert ids beyond the experts given",
             lambda: dispatch_sorted(X, EXPERTS, IDX + 1, GATES), ValueError, r"expert_idx must lie in \[0, 4\)"),
    BadInput("minillm.moe.dispatch_sorted", "float expert ids",
             lambda: dispatch_sorted(X, EXPERTS, IDX.float(), GATES), ValueError,
             "integer tensor of expert ids.*Routing"),
    BadInput("minillm.moe.dispatch_batched", "a list of experts instead of a bank",
             lambda: dispatch_batched(X, list(EXPERTS), IDX, GATES), TypeError, "ExpertBank.*from_experts"),
    BadInput("minillm.moe.SparseMoE", "an unknown dispatch",
             lambda: SparseMoE(C, E, K, dispatch="fast"), ValueError, "unknown dispatch 'fast'; choose one of"),
    BadInput("minillm.moe.SparseMoE", "a negative capacity factor",
             lambda: SparseMoE(C, E, K, capacity_factor=-1.0), ValueError, "capacity_factor must be > 0.*1.25"),
    BadInput("minillm.moe.SparseMoE", "flat (N, C) tokens",
             lambda: SparseMoE(C, E, K)(X), ValueError, r"expected input of shape \(B, T, 8\).*view\(1, N, C\)"),
    BadInput("minillm.moe.DenseMLP", "a hidden width of 0",
             lambda: DenseMLP(C, 0), ValueError, "hidden must be a positive integer"),
    BadInput("minillm.moe.MoEBlock", "a model config of another kind",
             lambda: MoEBlock({"n_embd": C}), TypeError, "MoEBlock takes a MoEConfig.*moe_config"),
    BadInput("minillm.moe.MoELM", "a dict instead of a MoEConfig",
             lambda: MoELM({"n_embd": C}), TypeError, "takes a MoEConfig.*moe_config"),
    BadInput("minillm.moe.MoELM", "a context longer than block_size",
             lambda: MODEL(torch.zeros(1, 9, dtype=torch.long)), ValueError, "exceeds block_size=8.*crop the context"),
    BadInput("minillm.moe.MoELM", "token ids outside the vocabulary",
             lambda: MODEL(torch.full((1, 4), 11)), ValueError, r"must lie in \[0, 11\).*tokenizer"),
    BadInput("minillm.moe.MoELM", "float token ids",
             lambda: MODEL(torch.zeros(1, 4)), ValueError, "integer token ids.*idx.long\\(\\)"),
    BadInput("minillm.moe.MoELM", "a cache made for another batch size",
             lambda: MODEL(torch.zeros(2, 4, dtype=torch.long), cache=MODEL.new_cache(1)), ValueError,
             "made for batch size 1.*new_cache\\(2\\)"),
    BadInput("minillm.moe.init_weights", "an unknown scheme",
             lambda: init_weights(MoELM(CFG), "orthogonal"), ValueError, "init must be one of"),
    BadInput("minillm.moe.init_weights", "something that is not a module",
             lambda: init_weights({"w": torch.zeros(2)}, "gpt2"), TypeError, "needs an nn.Module.*MoELM"),
    BadInput("minillm.moe.expert_load", "a dense baseline",
             lambda: expert_load(DENSE, torch.zeros(1, 4, dtype=torch.long)), TypeError,
             "MoELM with SparseMoE layers.*dense baseline.*pass the MoE model"),
    BadInput("minillm.moe.expert_load", "float inputs",
             lambda: expert_load(MODEL, torch.zeros(1, 4)), ValueError, r"\(B, T\) batch of token ids.*get_batch"),
    BadInput("minillm.moe.routing_by_token", "a 1-D sequence",
             lambda: routing_by_token(MODEL, torch.zeros(4, dtype=torch.long)), ValueError,
             r"\(B, T\) batch of token ids.*get_batch"),
    BadInput("minillm.moe.load_callback", "float probe tokens",
             lambda: load_callback(torch.zeros(1, 4)), ValueError, r"\(B, T\) batch of token ids.*get_batch"),
    BadInput("minillm.moe.load_history", "a history without load metrics",
             lambda: load_history([{"val_loss": 1.0}], 1, E), ValueError, "load_callback.*history.extra"),
]

EXEMPT = {
    "minillm.moe.MoEStats": "built by SparseMoE.forward from its own routing; a reader never constructs one",
    "minillm.moe.Routing": "a plain record the routers return; its fields are checked where they are consumed",
}


@cases_param(CASES)
def test_bad_input_is_rejected_clearly(case):
    check_case(case)
