"""Plausible wrong answers to chapter 3's exercises: CI requires each exercise's check to reject every one.

Keys are exercise numbers; each value maps a description of the mistake to the code a learner would write in
place of the solution region.
"""

WRONG_ANSWERS = {
    1: {  # count LoRA's parameters
        "counts the full update d_in * d_out instead of r (d_in + d_out)": """
return sum(m.in_features * m.out_features for name, m in model.named_modules()
           if isinstance(m, nn.Linear) and name.split(".")[-1] not in skip)
""",
        "forgets the rank (counts d_in + d_out per layer)": """
return sum(m.in_features + m.out_features for name, m in model.named_modules()
           if isinstance(m, nn.Linear) and name.split(".")[-1] not in skip)
""",
        "ignores skip and counts the classifier head too": """
return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
           if isinstance(m, nn.Linear))
""",
    },
    2: {  # export a merged layer
        "forgets the alpha / r scaling": """
name = layer.active_adapter
A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
base = layer.base_layer
out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
with torch.no_grad():
    out.weight.copy_(base.weight + B @ A)
    if base.bias is not None:
        out.bias.copy_(base.bias)
return out
""",
        "merges in place, changing the LoRA layer's own weight": """
name = layer.active_adapter
A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
base = layer.base_layer
with torch.no_grad():
    base.weight += layer.scaling[name] * (B @ A)
out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
with torch.no_grad():
    out.weight.copy_(base.weight)
    if base.bias is not None:
        out.bias.copy_(base.bias)
return out
""",
        "drops the bias": """
name = layer.active_adapter
A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
base = layer.base_layer
out = nn.Linear(base.in_features, base.out_features, bias=False)
with torch.no_grad():
    out.weight.copy_(base.weight + layer.scaling[name] * (B @ A))
return out
""",
    },
    3: {  # the embedding adapter's forward pass
        "forgets the scaling": """
after_a = F.embedding(ids, A.T)
return F.embedding(ids, E) + after_a @ B.T
""",
        "returns only the update, without the pretrained rows": """
after_a = F.embedding(ids, A.T)
return scaling * after_a @ B.T
""",
        "scales the pretrained rows together with the update": """
after_a = F.embedding(ids, A.T)
return scaling * (F.embedding(ids, E) + after_a @ B.T)
""",
    },
    4: {  # the memory training keeps alive
        "gives every parameter a gradient (frozen ones too)": """
return (2 * n_total + 2 * n_trainable) * bytes_per_value / 2**20
""",
        "forgets AdamW's second moment": """
return (n_total + 2 * n_trainable) * bytes_per_value / 2**20
""",
        "returns bytes instead of MiB": """
return (n_total + 3 * n_trainable) * bytes_per_value
""",
    },
    5: {  # the best rank-r update
        "keeps the r smallest singular values": """
U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
root = S[-r:].sqrt()
return U[:, -r:] * root, root[:, None] * Vh[-r:]
""",
        "puts the whole of Sigma into both factors": """
U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
return U[:, :r] * S[:r], S[:r, None] * Vh[:r]
""",
        "a random rank-r factorisation of the right shapes": """
B = torch.randn(delta.shape[0], r) / delta.shape[0] ** 0.5
return B, torch.linalg.pinv(B) @ delta
""",
    },
    6: {  # one batch, a different adapter per row
        "applies every adapter to every row": """
out = base(x)
for name, (A, B, scaling) in adapters.items():
    out = out + scaling * (x @ A.T @ B.T)
return out
""",
        "runs the whole batch with the first row's adapter": """
A, B, scaling = adapters[rows[0]]
return base(x) + scaling * (x @ A.T @ B.T)
""",
        "forgets each adapter's scaling": """
out = base(x)
for name, (A, B, scaling) in adapters.items():
    idx = [i for i, row in enumerate(rows) if row == name]
    if idx:
        out[idx] = out[idx] + x[idx] @ A.T @ B.T
return out
""",
    },
}
