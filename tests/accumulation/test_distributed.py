"""Data parallelism on a real engine: two gloo processes, accumulation with no_sync, token counts across ranks."""

from __future__ import annotations

import pytest
import torch

from minillm.accumulation.distributed import (DataParallelSetup, Variant, full_batch_reference, rank_loss_scale,
                                              rank_micro_batches, run_data_parallel)

SETUP = DataParallelSetup(world_size=2, accumulation_steps=4, steps=2)


@pytest.fixture(scope="module")
def results():
    return run_data_parallel(SETUP), full_batch_reference(SETUP)


def test_no_sync_all_reduces_once_per_step_instead_of_once_per_micro_batch(results):
    res, _ = results
    synced, deferred = res["sync every micro-batch, global"], res["no_sync, global"]
    assert deferred.all_reduces == SETUP.steps  # the model fits one bucket: one all-reduce per optimizer step
    assert synced.all_reduces == SETUP.accumulation_steps * deferred.all_reduces
    assert synced.all_reduce_bytes == SETUP.accumulation_steps * deferred.all_reduce_bytes


def test_global_token_normalisation_gives_the_full_batch_gradient(results):
    res, ref = results
    tokens = res["no_sync, global"].tokens_per_rank
    assert tokens[0][0] > 1.5 * tokens[1][0]  # the ranks hold very different numbers of tokens
    for name in ("no_sync, global", "sync every micro-batch, global"):
        assert res[name].max_error(ref, "grad") < 1e-6, name
        assert res[name].max_error(ref, "weight") < 1e-6, name  # and the weights after two SGD steps


def test_per_rank_means_and_a_missing_world_size_factor_are_wrong(results):
    res, ref = results
    assert res["no_sync, local"].relative_error(ref) > 0.05  # a mean of per-rank means
    half = res["no_sync, global_without_world_size"]
    assert abs(half.relative_error(ref) - (1 - 1 / SETUP.world_size)) < 1e-5  # exactly 1/W of the gradient
    scaled = {k: t * SETUP.world_size for k, t in half.tensors.items() if k.startswith("grad.")}
    assert max((scaled[k] - ref[k]).abs().max().item() for k in scaled) < 1e-6


def test_rank_loss_scale():
    assert rank_loss_scale(100, 4) == pytest.approx(0.04)
    assert rank_loss_scale(100, 4, "local", local_units=10) == pytest.approx(0.1)
    assert rank_loss_scale(100, 4, "global_without_world_size") == pytest.approx(0.01)
    with pytest.raises(ValueError, match="all-reduce the ranks' unit counts"):
        rank_loss_scale(0, 2)
    with pytest.raises(ValueError, match="normalisation must be one of"):
        rank_loss_scale(10, 2, "mean")


def test_ranks_get_different_lengths():
    a, b = rank_micro_batches(SETUP, 0, 0), rank_micro_batches(SETUP, 0, 1)
    assert len(a) == len(b) == SETUP.accumulation_steps
    assert sum(int(x["attention_mask"].sum()) for x in a) > sum(int(x["attention_mask"].sum()) for x in b)


@pytest.mark.slow
def test_torchrun_runs_the_same_worker():
    res = run_data_parallel(SETUP, variants=(Variant(True, "global"),), launcher="torchrun")
    assert res["no_sync, global"].all_reduces == SETUP.steps
    assert res["no_sync, global"].max_error(full_batch_reference(SETUP), "weight") < 1e-6
