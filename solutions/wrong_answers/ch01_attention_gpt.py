"""Plausible wrong answers to chapter 1's exercises: CI requires each exercise's check to reject every one.

Keys are exercise numbers; each value maps a description of the mistake to the code a learner would write in
place of the solution region (a tuple when the exercise cell has several regions).
"""

WRONG_ANSWERS = {
    1: {  # the bottom-right causal mask
        "top-left aligned mask (what is_causal=True builds)":
            "return torch.ones(t_query, t_key, dtype=torch.bool).tril()",
        "off by one: the query cannot see its own key":
            "return torch.ones(t_query, t_key, dtype=torch.bool).tril(diagonal=t_key - t_query - 1)",
        "diagonal with the sign flipped":
            "return torch.ones(t_query, t_key, dtype=torch.bool).tril(diagonal=t_query - t_key)",
    },
    2: {  # a softmax that does not overflow
        "softmax without subtracting the row maximum": """
scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
scores = scores.masked_fill(~mask, float("-inf"))
weights = torch.exp(scores)
weights = weights / weights.sum(dim=-1, keepdim=True)
return weights @ v
""",
        "subtracting the global maximum instead of each row's": """
scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
scores = scores.masked_fill(~mask, float("-inf"))
weights = torch.exp(scores - scores.max())
weights = weights / weights.sum(dim=-1, keepdim=True)
return weights @ v
""",
        "no 1/sqrt(d) scaling": """
scores = q @ k.transpose(-2, -1)
scores = scores.masked_fill(~mask, float("-inf"))
scores = scores - scores.amax(dim=-1, keepdim=True)
weights = torch.exp(scores)
return weights / weights.sum(dim=-1, keepdim=True) @ v
""",
    },
    3: {  # nucleus (top-p) sampling
        "drops the token that crosses p (keeps only tokens strictly inside the nucleus)": """
sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
drop_sorted = cumulative > p
drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
return logits.masked_fill(drop, float("-inf"))
""",
        "cumulative sum in vocabulary order instead of sorted order": """
cumulative = logits.softmax(dim=-1).cumsum(dim=-1)
drop = (cumulative - logits.softmax(dim=-1)) >= p
return logits.masked_fill(drop, float("-inf"))
""",
        "forgets to map the sorted mask back to vocabulary order": """
sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
drop = (cumulative - sorted_logits.softmax(dim=-1)) >= p
return logits.masked_fill(drop, float("-inf"))
""",
    },
    4: {  # the memory of a KV cache: (the formula, the two answers); None keeps the worked answer
        "forgets the factor 2 (keys only)":
            ("return n_layer * batch_size * n_kv_head * seq_len * head_size * bytes_per_element", None),
        "forgets the layers":
            ("return 2 * batch_size * n_kv_head * seq_len * head_size * bytes_per_element", None),
        "ignores the element size (always 4 bytes)":
            ("return 2 * n_layer * batch_size * n_kv_head * seq_len * head_size * 4", None),
        "builds a cache and asks it (allocates what it should only count)":
            ("return KVCache(n_layer, batch_size, n_kv_head, seq_len, head_size).nbytes() * bytes_per_element / 4", None),
        "answers in megabytes (10**6) instead of MiB": (None, """
cfg = gpt_config("gpt-shakespeare", vocab_size=65)
full_preset_mib = kv_cache_bytes(cfg.n_layer, 64, cfg.n_head, cfg.block_size, cfg.head_size) / 1e6
llama2_7b_gib = kv_cache_bytes(32, 1, 32, 4096, 128, bytes_per_element=2) / 2**30
"""),
        "answers for one sequence of the full preset and the Llama cache in float32": (None, """
cfg = gpt_config("gpt-shakespeare", vocab_size=65)
full_preset_mib = kv_cache_bytes(cfg.n_layer, 1, cfg.n_head, cfg.block_size, cfg.head_size) / 2**20
llama2_7b_gib = kv_cache_bytes(32, 1, 32, 4096, 128) / 2**30
"""),
    },
    5: {  # multi-query attention
        "no causal mask": """
q = self.q_proj(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)
k, v = self.k_proj(x).unsqueeze(1), self.v_proj(x).unsqueeze(1)
y = (q @ k.transpose(-2, -1) / math.sqrt(self.head_size)).softmax(-1) @ v
return self.c_proj(y.transpose(1, 2).reshape(B, T, C))
""",
        "scales by sqrt(C) instead of sqrt(head_size)": """
q = self.q_proj(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)
k, v = self.k_proj(x).unsqueeze(1), self.v_proj(x).unsqueeze(1)
scores = q @ k.transpose(-2, -1) / math.sqrt(C)
scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).tril().logical_not(), float("-inf"))
return self.c_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))
""",
        "reassembles heads with a view instead of transposing back": """
q = self.q_proj(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)
k, v = self.k_proj(x).unsqueeze(1), self.v_proj(x).unsqueeze(1)
scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)
scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).tril().logical_not(), float("-inf"))
return self.c_proj((scores.softmax(-1) @ v).reshape(B, T, C))
""",
    },
    6: {  # rotary embeddings with complex numbers
        "pairs neighbouring coordinates (2i, 2i+1), the other common layout": """
theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
angles = positions.to(torch.float64)[:, None] * theta[None, :]
z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
z = z * torch.polar(torch.ones_like(angles), angles)
return torch.view_as_real(z).reshape(x.shape).to(x.dtype)
""",
        "frequencies base**(-i/d) instead of base**(-2i/d)": """
theta = base ** (-torch.arange(0, d // 2, dtype=torch.float64) / d)
angles = positions.to(torch.float64)[:, None] * theta[None, :]
z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())
z = z * torch.polar(torch.ones_like(angles), angles)
return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)
""",
        "rotates the wrong way (by -m·theta)": """
theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
angles = positions.to(torch.float64)[:, None] * theta[None, :]
z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())
z = z * torch.polar(torch.ones_like(angles), -angles)
return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)
""",
        "ignores the positions (rotates every token by the first position's angle)": """
theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
angles = positions[:1].to(torch.float64)[:, None] * theta[None, :]
z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())
z = z * torch.polar(torch.ones_like(angles), angles)
return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)
""",
    },
}
