"""Plausible wrong answers to chapter 6's exercises: CI requires each exercise's check to reject every one.

Keys are exercise numbers; each value maps a description of the mistake to the code a learner would write in
place of the solution region (a tuple when the exercise cell has several regions).
"""

_FUSE_HEAD = """
if conv.padding != (0, 0):
    raise ValueError("a BN before a padded conv is not one conv: the padding would hold c, not 0")
"""

_FUSE_TAIL = """
fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0)
b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
with torch.no_grad():
    fused.weight.copy_(conv.weight * a[None, :, None, None])
    fused.bias.copy_(BIAS)
return fused
"""

_DW_HEAD = """
d = dw.weight[:, 0]
w1 = pw.weight[:, :, 0, 0]
b_dw = dw.bias if dw.bias is not None else torch.zeros(dw.out_channels)
b_pw = pw.bias if pw.bias is not None else torch.zeros(pw.out_channels)
"""

_DW_TAIL = """
with torch.no_grad():
    merged.weight.copy_(w1[:, :, None, None] * d[None])
    merged.bias.copy_(BIAS)
return merged
"""

WRONG_ANSWERS = {
    1: {  # a BatchNorm before a conv
        "forgets eps inside the square root": _FUSE_HEAD + """
a = bn.weight / torch.sqrt(bn.running_var)
c = bn.bias - a * bn.running_mean
""" + _FUSE_TAIL.replace("BIAS", 'b + torch.einsum("oihw,i->o", conv.weight, c)'),
        "keeps only the conv's bias (drops the BN's shift c)": _FUSE_HEAD + """
a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
""" + _FUSE_TAIL.replace("BIAS", "b"),
        "shift without the mean (c = beta)": _FUSE_HEAD + """
a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
c = bn.bias
""" + _FUSE_TAIL.replace("BIAS", 'b + torch.einsum("oihw,i->o", conv.weight, c)'),
        "accepts a padded conv": """
a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
c = bn.bias - a * bn.running_mean
""" + _FUSE_TAIL.replace("BIAS", 'b + torch.einsum("oihw,i->o", conv.weight, c)').replace(
            "conv.stride, 0)", "conv.stride, conv.padding)"),
    },
    2: {  # a depthwise k×k then a 1×1
        "forgets the depthwise conv's bias": _DW_HEAD + """
merged = nn.Conv2d(dw.in_channels, pw.out_channels, dw.kernel_size, dw.stride, dw.padding)
""" + _DW_TAIL.replace("BIAS", "b_pw"),
        "adds the depthwise bias without passing it through the 1×1": _DW_HEAD + """
merged = nn.Conv2d(dw.in_channels, pw.out_channels, dw.kernel_size, dw.stride, dw.padding)
""" + _DW_TAIL.replace("BIAS", "b_pw + b_dw.sum()"),
        "drops the padding (thinks the merge needs padding 0, as in 1×1 → k×k)": _DW_HEAD + """
merged = nn.Conv2d(dw.in_channels, pw.out_channels, dw.kernel_size, dw.stride, 0)
""" + _DW_TAIL.replace("BIAS", "w1 @ b_dw + b_pw"),
        "forgets the stride": _DW_HEAD + """
merged = nn.Conv2d(dw.in_channels, pw.out_channels, dw.kernel_size, 1, dw.padding)
""" + _DW_TAIL.replace("BIAS", "w1 @ b_dw + b_pw"),
    },
    3: {  # a whole RepVGG block in one conv
        "identity branch without its BatchNorm": """
channels = conv3.out_channels
identity = nn.Conv2d(channels, channels, 1)
with torch.no_grad():
    identity.weight.copy_(reparam.identity_kernel(channels, 1))
    identity.bias.zero_()
branches = [reparam.fuse_conv_bn(conv3, bn3), reparam.fuse_conv_bn(conv1, bn1), identity]
return reparam.add_branches(*branches)
""",
        "fuses the identity with the 3×3 branch's BN": """
channels = conv3.out_channels
identity = nn.Conv2d(channels, channels, 1, bias=False)
with torch.no_grad():
    identity.weight.copy_(reparam.identity_kernel(channels, 1))
branches = [reparam.fuse_conv_bn(conv3, bn3), reparam.fuse_conv_bn(conv1, bn1), reparam.fuse_conv_bn(identity, bn3)]
return reparam.add_branches(*branches)
""",
        "forgets the identity branch": """
return reparam.add_branches(reparam.fuse_conv_bn(conv3, bn3), reparam.fuse_conv_bn(conv1, bn1))
""",
    },
    4: {  # a smoother λ schedule
        "the linear ramp (not smoother)": """
if not 0.0 < ramp <= 1.0:
    raise ValueError(f"ramp must be in (0, 1], got {ramp}")
return min(1.0, step / (ramp * total))
""",
        "ramps over the whole run instead of rho T": """
if not 0.0 < ramp <= 1.0:
    raise ValueError(f"ramp must be in (0, 1], got {ramp}")
return 0.5 * (1.0 - math.cos(math.pi * min(step, total) / total))
""",
        "cosine without the 1 − (starts at 1 and falls)": """
if not 0.0 < ramp <= 1.0:
    raise ValueError(f"ramp must be in (0, 1], got {ramp}")
end = ramp * total
return 1.0 if step >= end else 0.5 * (1.0 + math.cos(math.pi * step / end))
""",
        "never checks the ramp": """
end = ramp * total
return 1.0 if step >= end else 0.5 * (1.0 - math.cos(math.pi * step / end))
""",
    },
    5: {  # Spearman with ties
        "ranks without averaging ties (argsort of argsort)": """
ra = np.argsort(np.argsort(np.asarray(a, dtype=float))) + 1.0
rb = np.argsort(np.argsort(np.asarray(b, dtype=float))) + 1.0
return float(np.corrcoef(ra, rb)[0, 1])
""",
        "Pearson on the values instead of the ranks": """
return float(np.corrcoef(np.asarray(a, dtype=float), np.asarray(b, dtype=float))[0, 1])
""",
        "argsort taken as the ranks (the sorting permutation, not its inverse)": """
ra = np.argsort(np.asarray(a, dtype=float), kind="stable") + 1.0
rb = np.argsort(np.asarray(b, dtype=float), kind="stable") + 1.0
return float(np.corrcoef(ra, rb)[0, 1])
""",
    },
}
