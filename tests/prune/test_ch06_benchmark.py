"""The UPDP latency benchmark times four forms of one network in one interleaved run and splits the gain."""

import json

import torch

from minillm.prune import ResCNN
from minillm.prune.models import ResCNNConfig
from notebook_utils import load_script

SMALL_CNN = ResCNNConfig(channels=8, expand=16, depth=4)


def _bench():
    return load_script("benchmarks/ch06_updp_latency.py")


def test_spread_mask_prunes_k_blocks():
    bench = _bench()
    assert bench.spread_mask(6, 3) == (True, False, True, False, False, True)
    for n, k in [(6, 3), (8, 4), (4, 2), (5, 1)]:
        assert sum(bench.spread_mask(n, k)) == k


def test_variants_differ_only_where_the_split_says():
    """baseline → norm swap adds norms/acts; → activation removal drops the inner GELUs; → merge drops layers."""
    bench = _bench()
    x = torch.randn(8, 1, 8, 8)
    variants, err = bench.build_variants(ResCNN, SMALL_CNN, 2, x)
    assert err < 1e-5 and list(variants) == list(bench.VARIANTS)
    from minillm.prune import count_layers
    c = {name: count_layers(m, x) for name, m in variants.items()}
    assert c["norm_swap"]["weight"] == c["activation_removed"]["weight"] == c["baseline"]["weight"]
    assert c["norm_swap"]["norm"] == c["baseline"]["norm"] + 2  # one BN added after each of the 2 pruned blocks
    assert c["activation_removed"]["act"] == c["norm_swap"]["act"] - 2  # the inner GELUs are gone
    assert c["merged"]["weight"] == c["baseline"]["weight"] - 2 * 2  # 3 convs per pruned block become 1
    with torch.no_grad():  # the three unmerged forms are different functions, the last two merge exactly
        assert not torch.allclose(variants["baseline"](x), variants["norm_swap"](x))


def test_benchmark_writes_a_split_that_adds_up(tmp_path, monkeypatch):
    monkeypatch.delenv("MINILLM_PROFILE", raising=False)
    monkeypatch.delenv("MINILLM_SMOKE", raising=False)
    bench = _bench()
    bench.main(["--threads", "1", "--rounds", "2", "--batch", "16", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "ch06_updp_latency-tiny-cpu.json").read_text())
    assert result["machine"]["device_type"] == "cpu" and set(result["threads"]) == {"1"}
    for arch in ("cnn", "vit"):
        res = result["threads"]["1"][arch]
        assert list(res["models"]) == list(bench.VARIANTS) and res["merge_rel_err"] < 1e-5
        models = res["models"]
        for clock, key in (("wall", "ms_per_batch"), ("cpu", "cpu_ms_median")):
            shares = sum(step["share_of_gain"] for step in res["split"][clock].values())
            assert abs(shares - 1.0) < 1e-9  # the three steps account for the whole baseline → merged change
            saved = sum(step["ms_saved"] for step in res["split"][clock].values())
            assert abs(saved - (models["baseline"][key] - models["merged"][key])) < 1e-9
            assert res["speedup_merged_vs_baseline"][clock] > 0
        assert models["merged"]["layers"]["weight"] < models["baseline"]["layers"]["weight"]
