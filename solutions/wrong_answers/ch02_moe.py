"""Plausible wrong answers to chapter 2's exercises: CI requires each exercise's check to reject every one.

Keys are exercise numbers; each value maps a description of the mistake to the code a learner would write in
place of the solution region (a tuple when the exercise cell has several regions; None keeps the solution there).
"""

WRONG_ANSWERS = {
    1: {  # the Switch load-balancing loss
        "f divided by the number of tokens N instead of the N·k assignments": """
n_experts = probs.size(-1)
counts = torch.bincount(expert_idx.reshape(-1), minlength=n_experts).to(probs.dtype)
f = counts / expert_idx.size(0)
p = probs.mean(dim=0)
return n_experts * (f * p).sum()
""",
        "the mean probability used for f as well (E · Σ P_i², no counts)": """
n_experts = probs.size(-1)
p = probs.mean(dim=0)
return n_experts * (p * p).sum()
""",
        "the factor E forgotten": """
n_experts = probs.size(-1)
counts = torch.bincount(expert_idx.reshape(-1), minlength=n_experts).to(probs.dtype)
f = counts / expert_idx.numel()
return (f * probs.mean(dim=0)).sum()
""",
    },
    2: {  # expert capacity, first choices first
        "token-major order: a token's second choice is served before the next token's first": """
N, k = expert_idx.shape
token_major = expert_idx.reshape(-1)
one_hot = F.one_hot(token_major, n_experts)
position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1
return (position < capacity).view(N, k)
""",
        "off by one: slots numbered from 0 but compared with <=, so each expert keeps capacity + 1": """
N, k = expert_idx.shape
choice_major = expert_idx.t().reshape(-1)
one_hot = F.one_hot(choice_major, n_experts)
position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1
return (position <= capacity).view(k, N).t()
""",
        "choice-major order, but reshaped back without the transpose": """
N, k = expert_idx.shape
choice_major = expert_idx.t().reshape(-1)
one_hot = F.one_hot(choice_major, n_experts)
position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1
return (position < capacity).view(N, k)
""",
    },
    3: {  # the router z-loss, and training with it
        "logsumexp not squared": ("return torch.logsumexp(logits, dim=-1).mean()", None),
        "the largest logit instead of the logsumexp": ("return logits.max(dim=-1).values.square().mean()", None),
        "the z-loss written but left out of the training objective": (None, """
logits = router(x)
loss = F.cross_entropy(logits, target)
opt.zero_grad()
loss.backward()
opt.step()
"""),
    },
    4: {  # expert-choice routing
        "raw scores as the gates instead of the softmax probabilities": """
gate, token = scores.topk(capacity, dim=0)
out = torch.zeros_like(x)
for e, expert in enumerate(experts):
    out = out.index_add(0, token[:, e], expert(x[token[:, e]]) * gate[:, e:e + 1])
return out
""",
        "index_copy: a token picked by two experts keeps only the last one": """
probs = scores.softmax(dim=-1)
gate, token = probs.topk(capacity, dim=0)
out = torch.zeros_like(x)
for e, expert in enumerate(experts):
    out = out.index_copy(0, token[:, e], expert(x[token[:, e]]) * gate[:, e:e + 1])
return out
""",
        "tokens pick experts (top-k over experts, the chapter's routing) instead of experts picking tokens": """
probs = scores.softmax(dim=-1)
gate, expert_of = probs.topk(1, dim=1)
out = torch.zeros_like(x)
for e, expert in enumerate(experts):
    token = (expert_of[:, 0] == e).nonzero().squeeze(1)
    out = out.index_add(0, token, expert(x[token]) * gate[token])
return out
""",
    },
}
