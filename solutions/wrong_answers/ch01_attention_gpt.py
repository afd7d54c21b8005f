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
    4: {  # the memory of a KV cache
        "forgets the factor 2 (keys only)":
            "return n_layer * batch_size * n_head * seq_len * head_size * bytes_per_element",
        "forgets the layers":
            "return 2 * batch_size * n_head * seq_len * head_size * bytes_per_element",
        "ignores the element size (counts numbers, not bytes)":
            "return 2 * n_layer * batch_size * n_head * seq_len * head_size * 4",
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
}
