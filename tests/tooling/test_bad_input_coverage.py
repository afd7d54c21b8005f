"""Every public entry point of every chapter is in the bad-input catalogue (or exempt, with the reason)."""

import importlib
import inspect

import pytest
from notebook_utils import ROOT, load_script

SUBPACKAGES = ["minillm.data", "minillm.pretrained", "minillm.gpt", "minillm.moe", "minillm.lora",
               "minillm.accumulation", "minillm.quant", "minillm.prune"]


def _catalogues() -> list:
    return [load_script(str(p.relative_to(ROOT))) for p in sorted((ROOT / "tests").glob("*/test_*_bad_inputs.py"))]


def _public_callables(package: str) -> list[str]:
    module = importlib.import_module(package)
    names = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            names.append(f"{package}.{name}")
    return names


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_every_public_entry_point_is_catalogued(package):
    covered, exempt = set(), {}
    for catalogue in _catalogues():
        covered |= {case.entry for case in getattr(catalogue, "CASES", [])}
        exempt.update(getattr(catalogue, "EXEMPT", {}))
    missing = [name for name in _public_callables(package) if name not in covered and name not in exempt]
    assert not missing, (f"{len(missing)} public names of {package} have no bad-input case and no exemption: "
                         f"{missing}. Add a BadInput to tests/<chapter>/test_<chapter>_bad_inputs.py, or an EXEMPT entry "
                         "saying why the name takes no input worth rejecting.")
    unknown = sorted(e for e in covered | set(exempt) if e.startswith(package + ".")
                     and e not in _public_callables(package))
    assert not unknown, f"catalogue entries name things {package} does not export: {unknown}"


def test_exemptions_give_a_reason():
    for catalogue in _catalogues():
        for name, reason in getattr(catalogue, "EXEMPT", {}).items():
            assert isinstance(reason, str) and len(reason) > 15, f"{name}: say why it is exempt"
