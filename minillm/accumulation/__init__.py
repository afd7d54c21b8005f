"""Chapter 4 — gradient accumulation (the BLOOM-560m experiment).

The gradient of a large batch from several micro-batches, normalised by the step's total unit count (examples
or tokens), the stepping rule with a short tail, and the experiment that compares batch 1, micro-batch 1 ×
accumulation 16 and batch 16 in accuracy and memory.

Modules: :mod:`~minillm.accumulation.accumulate`, :mod:`~minillm.accumulation.experiment`.
"""

from minillm.accumulation.accumulate import (IGNORE_INDEX, NORMALISATIONS, UNITS, accumulate_gradients, count_units,
                                             grouped, should_step, summed_loss, train_accumulated)
from minillm.accumulation.experiment import (ACCUMULATION_FULL, ACCUMULATION_TINY, AccumulationConfig, RunResult,
                                             freeze_lower_layers, run_scheme)

__all__ = ["IGNORE_INDEX", "NORMALISATIONS", "UNITS", "accumulate_gradients", "count_units", "grouped",
           "should_step", "summed_loss", "train_accumulated", "ACCUMULATION_FULL", "ACCUMULATION_TINY",
           "AccumulationConfig", "RunResult", "freeze_lower_layers", "run_scheme"]
