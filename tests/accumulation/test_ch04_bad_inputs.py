"""Bad inputs to minillm.accumulation fail early, naming the problem and the fix (the catalogue's chapter-4 part)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from bad_inputs import BadInput, cases_param, check_case
from minillm.accumulation import (ActivationCapExceeded, AccumulationConfig, DataParallelSetup, Scheme, Variant,
                                  accumulate_data_parallel, accumulate_gradients, accuracies, activation_cap,
                                  check_micro_batch, count_units, freeze_lower_layers, grouped, headline_claims,
                                  paired, rank_loss_scale, run_data_parallel, run_scheme, scheme_differences,
                                  should_step, step_groups, step_plan, summed_loss, train_accumulated)
from minillm.accumulation import FeatureClassifier, ProbeConfig, probe_features, run_probe
from minillm.core.claims import ClaimError
from minillm.pretrained import bloom_classifier

CLF = bloom_classifier(seed=0).eval()


def _batch(n=2, t=6, labels=None, device="cpu"):
    ids = torch.randint(1, 500, (n, t), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(n, dtype=torch.long) if labels is None else labels
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(n, t, dtype=torch.long, device=device),
            "labels": labels.to(device)}


def _all_padding():
    batch = _batch()
    return {**batch, "labels": torch.full((2, 6), -100)}


def _nan_model():
    model = bloom_classifier(seed=0).eval()
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    return model


def _bert(layers=4):
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers,
                                                    num_attention_heads=2, intermediate_size=64))


def _study(**accs):
    return {"runs": [{"scheme": s, "seed": i, "test_accuracy": a, "val_accuracy": a}
                     for s, values in accs.items() for i, a in enumerate(values)]}


_REVERSED = _study(**{"accumulation 16": [0.70, 0.71, 0.69, 0.70, 0.72], "batch 16": [0.78, 0.79, 0.77, 0.78, 0.8]})

CASES = [
    # stepping
    BadInput("minillm.accumulation.should_step", "accumulation 0", lambda: should_step(0, 0, 4), ValueError,
             "accumulation_steps must be an integer >= 1.*use 1 for no accumulation"),
    BadInput("minillm.accumulation.should_step", "an index past the epoch", lambda: should_step(4, 2, 4), ValueError,
             r"outside \[0, 4\).*0-based index"),
    BadInput("minillm.accumulation.grouped", "accumulation 0", lambda: grouped(range(3), 0), ValueError,
             "accumulation_steps must be an integer >= 1"),
    BadInput("minillm.accumulation.step_groups", "an unknown rule", lambda: step_groups(range(3), 2, "i % k"),
             ValueError, "unknown stepping rule 'i % k'.*'every_k' is the correct one"),
    BadInput("minillm.accumulation.step_groups", "zero epochs", lambda: step_groups(range(3), 2, epochs=0),
             ValueError, "epochs must be an integer >= 1"),
    BadInput("minillm.accumulation.step_plan", "a negative number of micro-batches", lambda: step_plan(-1, 2),
             ValueError, "num_micro_batches must be an integer >= 0"),
    # the loss and its normalisation
    BadInput("minillm.accumulation.count_units", "an unknown unit", lambda: count_units(_batch(), "words"),
             ValueError, "unit must be one of.*'examples' for a classifier, 'tokens' for a language model"),
    BadInput("minillm.accumulation.count_units", "float labels", lambda: count_units(
        _batch(labels=torch.zeros(2)), "examples"), ValueError, "needs labels of shape \\(B,\\) and dtype torch.long"),
    BadInput("minillm.accumulation.count_units", "a batch without labels", lambda: count_units(
        {"input_ids": torch.ones(2, 3, dtype=torch.long)}, "examples"), ValueError,
        "must be a dict with 'input_ids'.*'labels'.*collate_padded"),
    BadInput("minillm.accumulation.summed_loss", "a classifier batch with unit='tokens'",
             lambda: summed_loss(CLF, _batch(), "tokens"), ValueError, r"unit='tokens' needs labels of shape \(B, T\)"),
    BadInput("minillm.accumulation.summed_loss", "a label outside the classes",
             lambda: summed_loss(CLF, _batch(labels=torch.tensor([0, 5])), "examples"), ValueError,
             r"class indices in \[0, 2\).*num_labels=6"),
    BadInput("minillm.accumulation.summed_loss", "a batch on another device than the model",
             lambda: summed_loss(CLF, _batch(device="meta"), "examples"), ValueError,
             "the batch is on meta but the model on cpu: move it first"),
    BadInput("minillm.accumulation.accumulate_gradients", "an unknown normalisation",
             lambda: accumulate_gradients(CLF, [_batch()], normalisation="median"), ValueError,
             "normalisation must be one of"),
    BadInput("minillm.accumulation.accumulate_gradients", "no micro-batch", lambda: accumulate_gradients(CLF, []),
             ValueError, "needs at least one micro-batch"),
    BadInput("minillm.accumulation.accumulate_gradients", "one batch dict instead of a list",
             lambda: accumulate_gradients(CLF, _batch()), ValueError, "wrap a single batch as \\[batch\\]"),
    BadInput("minillm.accumulation.accumulate_gradients", "every target ignored",
             lambda: accumulate_gradients(CLF, [_all_padding()], unit="tokens"), ValueError,
             "no loss units.*check the labels"),
    BadInput("minillm.accumulation.accumulate_gradients", "mean_over_k without k",
             lambda: accumulate_gradients(CLF, [_batch()], normalisation="mean_over_k"), ValueError,
             "pass accumulation_steps=k"),
    BadInput("minillm.accumulation.accumulate_gradients", "weights that are NaN",
             lambda: accumulate_gradients(_nan_model(), [_batch()]), ValueError,
             "is nan.*lower the learning rate or clip the gradient norm"),
    BadInput("minillm.accumulation.train_accumulated", "an unknown stepping rule", lambda: train_accumulated(
        CLF, [_batch()], torch.optim.SGD(CLF.parameters(), lr=0.0), 1, rule="fabric"), ValueError,
        "unknown stepping rule 'fabric'"),
    BadInput("minillm.accumulation.train_accumulated", "an empty loader", lambda: train_accumulated(
        CLF, [], torch.optim.SGD(CLF.parameters(), lr=0.0), 1), ValueError, "loader is empty.*train_size"),
    BadInput("minillm.accumulation.train_accumulated", "accumulation 0", lambda: train_accumulated(
        CLF, [_batch()], torch.optim.SGD(CLF.parameters(), lr=0.0), 0), ValueError,
        "accumulation_steps must be an integer >= 1"),
    # the memory cap
    BadInput("minillm.accumulation.activation_cap", "a cap of 0 bytes", lambda: activation_cap(CLF, 0).__enter__(),
             ValueError, "cap_bytes must be a positive, finite number of bytes.*512 \\* 2\\*\\*20"),
    BadInput("minillm.accumulation.check_micro_batch", "a batch without input_ids", lambda: check_micro_batch(
        CLF, {"x": torch.ones(1)}, 2**20, lambda b: None), ValueError, "dict with 'input_ids'.*collate_padded"),
    BadInput("minillm.accumulation.check_micro_batch", "a cap below one example", lambda: check_micro_batch(
        CLF.train(), _batch(4), 1024, lambda b: summed_loss(CLF, b, "examples")), ActivationCapExceeded,
        "not even a micro-batch of 1 fits: shorten the sequences.*gradient checkpointing"),
    # data parallelism
    BadInput("minillm.accumulation.rank_loss_scale", "no global token count", lambda: rank_loss_scale(0, 2),
             ValueError, "all-reduce the ranks' unit counts before scaling"),
    BadInput("minillm.accumulation.rank_loss_scale", "'local' without the rank's count",
             lambda: rank_loss_scale(10, 2, "local"), ValueError, "needs this rank's own unit count"),
    BadInput("minillm.accumulation.DataParallelSetup", "zero ranks", lambda: DataParallelSetup(world_size=0),
             ValueError, "world_size must be an integer >= 1"),
    BadInput("minillm.accumulation.Variant", "an unknown normalisation", lambda: Variant(True, "mean"), ValueError,
             "normalisation must be one of.*'global' is the correct one"),
    BadInput("minillm.accumulation.run_data_parallel", "an unknown launcher",
             lambda: run_data_parallel(launcher="mpirun"), ValueError, "launcher must be 'spawn' or 'torchrun'"),
    BadInput("minillm.accumulation.run_data_parallel", "the same variant twice",
             lambda: run_data_parallel(variants=(Variant(), Variant())), ValueError, "list each Variant once"),
    BadInput("minillm.accumulation.accumulate_data_parallel", "no process group",
             lambda: accumulate_data_parallel(CLF, [_batch()]), RuntimeError,
             "not initialised in this process: call this inside a worker started by run_data_parallel or torchrun"),
    # the experiment
    BadInput("minillm.accumulation.AccumulationConfig", "an unknown corpus", lambda: AccumulationConfig(corpus="imdb"),
             ValueError, "unknown corpus 'imdb'; choose one of"),
    BadInput("minillm.accumulation.AccumulationConfig", "a learning rate of 0", lambda: AccumulationConfig(lr=0.0),
             ValueError, "lr must be a positive learning rate"),
    BadInput("minillm.accumulation.AccumulationConfig", "a negative train size",
             lambda: AccumulationConfig(train_size=-1), ValueError, "train_size must be None \\(the whole split\\)"),
    BadInput("minillm.accumulation.Scheme", "a micro-batch of 0", lambda: Scheme(0, 16), ValueError,
             "micro_batch_size must be an integer >= 1"),
    BadInput("minillm.accumulation.Scheme", "an unknown rule", lambda: Scheme(1, 16, "zero_first"), ValueError,
             "unknown stepping rule 'zero_first'"),
    BadInput("minillm.accumulation.run_scheme", "an unknown scheme name",
             lambda: run_scheme("batch 32", AccumulationConfig()), ValueError,
             "unknown scheme 'batch 32'.*or pass a Scheme"),
    BadInput("minillm.accumulation.freeze_lower_layers", "more layers than the encoder has",
             lambda: freeze_lower_layers(_bert(4), 5), ValueError, r"trainable_layers must be in \[0, 4\]"),
    BadInput("minillm.accumulation.freeze_lower_layers", "a model that is not a BERT encoder",
             lambda: freeze_lower_layers(bloom_classifier(seed=0), 1), TypeError,
             "supports BERT-style encoders.*pass trainable_layers=None"),
    # the linear probe
    BadInput("minillm.accumulation.ProbeConfig", "a learning rate of 0", lambda: ProbeConfig(lr=0.0), ValueError,
             "lr must be a positive learning rate"),
    BadInput("minillm.accumulation.ProbeConfig", "dropout 1", lambda: ProbeConfig(dropout=1.0), ValueError,
             r"dropout must be a probability in \[0, 1\)"),
    BadInput("minillm.accumulation.FeatureClassifier", "token ids instead of features",
             lambda: FeatureClassifier(torch.ones(4, 8, dtype=torch.long)), ValueError,
             "features must be a float tensor.*pass sentence embeddings"),
    BadInput("minillm.accumulation.probe_features", "a fine-tuning config instead of a probe config",
             lambda: probe_features(AccumulationConfig()), TypeError, "cfg must be a ProbeConfig.*use PROBE_TINY"),
    BadInput("minillm.accumulation.run_probe", "raw tensors instead of ProbeFeatures",
             lambda: run_probe("batch 1", torch.zeros(4, 8), ProbeConfig()), TypeError,
             "features must be the ProbeFeatures.*probe_features\\(cfg\\)"),
    # claims
    BadInput("minillm.accumulation.accuracies", "something that is not a study", lambda: accuracies([], "batch 1"),
             ValueError, "a study is the JSON that studies/ch04_accumulation_seeds.py writes.*read_results"),
    BadInput("minillm.accumulation.accuracies", "a scheme the study did not run",
             lambda: accuracies(_REVERSED, "batch 1"), ValueError, "no run of 'batch 1'; it has"),
    BadInput("minillm.accumulation.paired", "one shared seed", lambda: paired(
        _study(**{"a": [0.7], "b": [0.6]}), "a", "b"), ValueError, "share 1 seed.*run the study on more seeds"),
    BadInput("minillm.accumulation.scheme_differences", "something that is not a study",
             lambda: scheme_differences([]), ValueError, "a study is the JSON"),
    BadInput("minillm.accumulation.headline_claims", "a study whose result is reversed",
             lambda: headline_claims(_REVERSED), ClaimError, "does not support the claim 'accumulation 16 matches"),
]

EXEMPT = {
    "minillm.accumulation.StepPlan": "a frozen record of groups built by step_plan, which validates its inputs",
    "minillm.accumulation.ActivationCapExceeded": "the exception type itself; check_micro_batch cases raise it",
    "minillm.accumulation.ProbeFeatures": "a record of feature tensors, built only by probe_features",
    "minillm.accumulation.RunResult": "a record of one run, built only by run_scheme from validated settings",
    "minillm.accumulation.VariantResult": "a record built by run_data_parallel from its workers' files",
    "minillm.accumulation.full_batch_reference": "takes a DataParallelSetup, whose constructor validates every field",
}


@cases_param(CASES)
def test_bad_input_is_rejected_clearly(case):
    check_case(case)
