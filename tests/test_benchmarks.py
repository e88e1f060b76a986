"""The benchmark scripts run and their tables add up (no timing assertions: timings are noisy)."""

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from param_sets import param_shapes  # noqa: E402

TINY_BERT_PARAMS = sum(math.prod(shape) for shape in param_shapes("tiny-bert"))


@pytest.fixture(scope="module")
def step_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    r = subprocess.run([sys.executable, "benchmarks/optimizer_step.py", "--sets", "tiny-bert", "--dtypes", "float32",
                        "--rounds", "2", "--repeats", "2", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "optimizer_step.json").read_text())


def test_every_factory_and_implementation_is_timed(step_bench):
    _, result = step_bench
    rows = result["rows"]
    assert {(r["optimizer"], r["implementation"]) for r in rows} == {
        ("adam_l2", i) for i in ("for-loop", "foreach", "fused", "compiled")} | {
        ("adamw", i) for i in ("for-loop", "foreach", "fused", "compiled")} | {("adamw_fused", "fused")}
    assert all("error" not in r for r in rows)
    assert result["env"]["torch"] and result["env"]["device"].startswith("cpu")


def test_bandwidth_arithmetic(step_bench):
    _, result = step_bench
    for r in (r for r in result["rows"] if "error" not in r):
        bytes_per_param = 4  # float32
        assert r["params"] == TINY_BERT_PARAMS
        assert r["GBps"] == pytest.approx(7 * r["params"] * bytes_per_param / (r["median_ms"] / 1e3) / 1e9, rel=1e-9)
        assert r["fraction_of_inplace_add"] == pytest.approx(r["GBps"] / r["inplace_add_GBps"])
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["steps_timed"] == 4
        assert (r["compile_s"] is not None) == (r["implementation"] == "compiled")
        assert r["step_peak_added_bytes"] is not None and r["step_peak_added_bytes"] >= 0


def test_outputs_written(step_bench):
    out, _ = step_bench
    md = (out / "optimizer_step.md").read_text()
    assert md.startswith("Device: cpu") and "| tiny-bert | float32 | adamw | fused |" in md
    assert (out / "step_time_vs_params.png").read_bytes()[:4] == b"\x89PNG"
