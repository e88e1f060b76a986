"""Each entry's default implementation on a device is the fastest one a committed measurement of
that device timed (BERT-base's parameters, fp32; benchmarks/optimizer_step.py). The measurement is
read from the committed results, not rerun: a timing is not a test."""

import subprocess
import sys
from pathlib import Path

import pytest

from finetune_opt.optim import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import step_costs  # noqa: E402


def timed(device: str, name: str) -> dict:
    """implementation -> median ms of `name` on BERT-base fp32 over the device's committed runs, a
    later run's row replacing an earlier one's: what list-optimizers prints (benchmarks/step_costs.py)."""
    cost = step_costs.entry_cost(step_costs.measured_runs(device), name)
    return cost["median_ms"] if cost and (cost["parameters"], cost["dtype"]) == step_costs.PREFERRED else {}


@pytest.mark.parametrize("device", list(step_costs.MEASURED))
@pytest.mark.parametrize("name", list(REGISTRY))
def test_default_is_the_fastest_measured_implementation(name, device):
    spec, times = REGISTRY[name], timed(device, name)
    runnable = {i: t for i, t in times.items() if i in spec.implementations}
    if len(runnable) < 2:
        pytest.skip(f"{name}: fewer than two implementations timed on {device} (nothing to choose by)")
    assert spec.default_for(device) == min(runnable, key=runnable.get), runnable


def test_an_entry_timed_on_cpu_has_every_implementation_that_runs_there_timed():
    """A default is chosen among all of an entry's implementations, not some. (Muon was not timed
    on the AVX2-only CPU of 2026-12-03: over 11 minutes for one variant; its default stays.)"""
    for name, spec in REGISTRY.items():
        here = {i for i in spec.implementations if spec.supports(i, "cpu")}
        assert set(timed("cpu", name)) in (here, set()), name
    assert timed("cpu", "lion").keys() == {"for-loop", "foreach", "compiled"}


def test_the_shipped_step_costs_are_what_the_committed_results_say():
    """`list-optimizers` prints finetune_opt/optim/step_costs.json; benchmarks/step_costs.py makes
    it from the same committed runs this file reads, and must be rerun when they change."""
    p = subprocess.run([sys.executable, step_costs.__file__, "--check"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, "finetune_opt/optim/step_costs.json is stale: run python benchmarks/step_costs.py"
