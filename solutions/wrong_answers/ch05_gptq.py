"""Plausible wrong answers to chapter 5's exercises: CI requires each exercise's check to reject every one.

Keys are exercise numbers; each value maps a description of the mistake to the code a learner would write in
place of the solution region (a tuple when the exercise cell has several regions).
"""

WRONG_ANSWERS = {
    1: {  # symmetric, grouped RTN
        "scale max|w| / (2^b - 1): the range [-max, max] is twice that": """
N, K = W.shape
maxq = 2**bits - 1
Wg = W.reshape(N, K // groupsize, groupsize)
amax = Wg.abs().amax(dim=-1, keepdim=True)
amax = torch.where(amax == 0, torch.ones_like(amax), amax)
scale = amax / maxq
zero = (maxq + 1) / 2
q = torch.clamp(torch.round(Wg / scale) + zero, 0, maxq)
return (scale * (q - zero)).reshape(N, K)
""",
        "one scale per row instead of per group": """
N, K = W.shape
maxq = 2**bits - 1
amax = W.abs().amax(dim=-1, keepdim=True)
amax = torch.where(amax == 0, torch.ones_like(amax), amax)
scale = 2 * amax / maxq
zero = (maxq + 1) / 2
q = torch.clamp(torch.round(W / scale) + zero, 0, maxq)
return scale * (q - zero)
""",
        "zero point 2^(b-1) - 1 (the codes' midpoint rounded down)": """
N, K = W.shape
maxq = 2**bits - 1
Wg = W.reshape(N, K // groupsize, groupsize)
amax = Wg.abs().amax(dim=-1, keepdim=True)
amax = torch.where(amax == 0, torch.ones_like(amax), amax)
scale = 2 * amax / maxq
zero = (maxq + 1) / 2 - 1
q = torch.clamp(torch.round(Wg / scale) + zero, 0, maxq)
return (scale * (q - zero)).reshape(N, K)
""",
    },
    2: {  # the Hessian as a running mean
        "no rescaling of the old H": """
x = x.reshape(-1, H.shape[0]).float()
n_new = n + x.shape[0]
return H + (2.0 / n_new) * x.T @ x, n_new
""",
        "the new rows weighted by their own count, not the total": """
x = x.reshape(-1, H.shape[0]).float()
n_new = n + x.shape[0]
return H * (n / n_new) + (2.0 / x.shape[0]) * x.T @ x, n_new
""",
        "the covariance of the centred batch": """
x = x.reshape(-1, H.shape[0]).float()
x = x - x.mean(dim=0)
n_new = n + x.shape[0]
return H * (n / n_new) + (2.0 / n_new) * x.T @ x, n_new
""",
    },
    3: {  # act-order as a permutation
        "ascending order of H_kk": """
perm = torch.argsort(torch.diag(H), descending=False, stable=True)
Q, _ = gptq_quantize(W[:, perm], H[perm][:, perm], bits)
return Q[:, torch.argsort(perm)]
""",
        "the result left in quantization order": """
perm = torch.argsort(torch.diag(H), descending=True, stable=True)
Q, _ = gptq_quantize(W[:, perm], H[perm][:, perm], bits)
return Q
""",
        "undone with perm instead of its inverse": """
perm = torch.argsort(torch.diag(H), descending=True, stable=True)
Q, _ = gptq_quantize(W[:, perm], H[perm][:, perm], bits)
return Q[:, perm]
""",
        "an ascending stable sort flipped (ties come out reversed)": """
perm = torch.flip(torch.argsort(torch.diag(H), stable=True), [0])
Q, _ = gptq_quantize(W[:, perm], H[perm][:, perm], bits)
return Q[:, torch.argsort(perm)]
""",
    },
    4: {  # pack 4-bit codes
        "consecutive blocks of K/8 rows instead of every 8th row": """
K, N = codes.shape
words = torch.zeros(K // 8, N, dtype=torch.int64)
for j in range(8):
    words |= codes[j * (K // 8):(j + 1) * (K // 8)].long() << (4 * j)
return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
""",
        "nibbles in reversed order (row 0 in the top bits)": """
K, N = codes.shape
words = torch.zeros(K // 8, N, dtype=torch.int64)
for j in range(8):
    words |= codes[j::8].long() << (4 * (7 - j))
return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
""",
        "two's complement with 2^31 instead of 2^32": """
K, N = codes.shape
words = torch.zeros(K // 8, N, dtype=torch.int64)
for j in range(8):
    words |= codes[j::8].long() << (4 * j)
return torch.where(words >= 2**31, words - 2**31, words).to(torch.int32)
""",
    },
}
