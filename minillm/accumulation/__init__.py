"""Chapter 4 — gradient accumulation (the BLOOM-560m experiment).

The gradient of a large batch from several micro-batches, normalised by the step's total unit count (examples
or tokens); when to step (the correct rule and the reference scripts' two rules); an activation-memory cap that
refuses a micro-batch too large for the device; data parallelism over several processes with ``no_sync``; and
the experiment that compares batch 1, micro-batch 1 × accumulation 16 and batch 16 in accuracy and memory (a full
fine-tune, and a linear probe on frozen features for the seeds study), with its claims judged on paired intervals
over seeds.

Modules: :mod:`~minillm.accumulation.stepping`, :mod:`~minillm.accumulation.accumulate`,
:mod:`~minillm.accumulation.memory_cap`, :mod:`~minillm.accumulation.distributed`,
:mod:`~minillm.accumulation.experiment`, :mod:`~minillm.accumulation.probe`, :mod:`~minillm.accumulation.claims`.
"""

from minillm.accumulation.accumulate import (IGNORE_INDEX, NORMALISATIONS, UNITS, accumulate_gradients, count_units,
                                             summed_loss, train_accumulated)
from minillm.accumulation.claims import (BATCH1_TUNED, COMPARISONS, accuracies, headline_claims, paired,
                                         scheme_differences)
from minillm.accumulation.distributed import (RANK_NORMALISATIONS, DataParallelSetup, Variant, VariantResult,
                                              accumulate_data_parallel, full_batch_reference, rank_loss_scale,
                                              run_data_parallel)
from minillm.accumulation.experiment import (ACCUMULATION_FULL, ACCUMULATION_TINY, REVIEWS_FULL, REVIEWS_TINY,
                                             SCHEMES, AccumulationConfig, RunResult, Scheme, freeze_lower_layers,
                                             run_scheme)
from minillm.accumulation.probe import (PROBE_FULL, PROBE_TINY, FeatureClassifier, ProbeConfig, ProbeFeatures,
                                        probe_features, run_probe)
from minillm.accumulation.memory_cap import ActivationCapExceeded, activation_cap, check_micro_batch
from minillm.accumulation.stepping import STEP_RULES, StepPlan, grouped, should_step, step_groups, step_plan

__all__ = [
    # stepping
    "STEP_RULES", "StepPlan", "grouped", "should_step", "step_groups", "step_plan",
    # accumulation
    "IGNORE_INDEX", "NORMALISATIONS", "UNITS", "accumulate_gradients", "count_units", "summed_loss",
    "train_accumulated",
    # memory cap
    "ActivationCapExceeded", "activation_cap", "check_micro_batch",
    # data parallelism
    "RANK_NORMALISATIONS", "DataParallelSetup", "Variant", "VariantResult", "accumulate_data_parallel",
    "full_batch_reference", "rank_loss_scale", "run_data_parallel",
    # the experiment and its claims
    "ACCUMULATION_FULL", "ACCUMULATION_TINY", "REVIEWS_FULL", "REVIEWS_TINY", "SCHEMES", "AccumulationConfig",
    "RunResult", "Scheme", "freeze_lower_layers", "run_scheme",
    # the seeds study's linear probe
    "PROBE_FULL", "PROBE_TINY", "FeatureClassifier", "ProbeConfig", "ProbeFeatures", "probe_features", "run_probe",
    "BATCH1_TUNED", "COMPARISONS", "accuracies", "headline_claims", "paired", "scheme_differences",
]
