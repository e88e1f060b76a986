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
    """A default is chosen among all of an entry's implementations, not some."""
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


def test_the_multiple_of_fused_adamw_is_taken_within_the_fastest_ones_run():
    """Machine load moves a run's timings together: the fastest implementation's run's own fused
    AdamW is the reference where it timed one; a run without one takes the latest run's."""
    env = {"device": "cpu (2 cores)", "torch": "2.13.0+cpu", "date": "2026-12-04"}

    def row(optimizer, implementation, ms):
        return {"set": "bert-base-110M", "dtype": "float32", "optimizer": optimizer,
                "implementation": implementation, "median_ms": ms}

    busy = step_costs.RESULTS / "busy/optimizer_step.json"
    quiet = step_costs.RESULTS / "quiet/optimizer_step.json"
    alone = step_costs.RESULTS / "alone/optimizer_step.json"
    runs = [(busy, {"env": env, "rows": [row("adamw_fused", "fused", 200.0), row("lion", "foreach", 600.0),
                                         row("lion", "compiled", 300.0)]}),
            (quiet, {"env": env, "rows": [row("adamw_fused", "fused", 100.0), row("sgd", "fused", 80.0)]}),
            (alone, {"env": env, "rows": [row("lion", "for-loop", 900.0)]})]
    lion = step_costs.entry_cost(runs, "lion")
    assert lion["median_ms"] == {"foreach": 600.0, "compiled": 300.0, "for-loop": 900.0}
    assert lion["x_fused_adamw"] == 1.5  # 300 / 200, its own run's; not 300 / 100
    assert step_costs.entry_cost(runs[1:], "lion")["x_fused_adamw"] == 9.0  # 900 / the latest reference
