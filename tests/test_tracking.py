"""Trackers through Accelerate's log_with: TensorBoard's event file, read back, holds every log
step's loss and lr (equal to results' history), gradient norm, step time and memory."""

import math

import pytest
from accelerate.tracking import get_available_trackers
from accelerate.state import AcceleratorState, GradientState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from finetune_opt.config.run_config import RunConfig
from finetune_opt.errors import ConfigError
from finetune_opt.train.run_dir import claim_output_dir
from finetune_opt.train.tracking import AUTO, LOG_DIR, TRACKERS, trackers
from tests.test_reliability import toy_fit

LOGGED = ("train/loss", "train/lr", "train/grad_norm", "train/step_ms", "train/memory_mib")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def scalars(log_dir) -> dict:
    events = EventAccumulator(str(log_dir)).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_file_holds_every_log_step(tmp_path):
    result = toy_fit(tmp_path, log_every=4, log_with="tensorboard")  # 12 steps: logs at 4, 8, 12
    logged = scalars(tmp_path / LOG_DIR)
    assert set(LOGGED) <= set(logged)
    for tag in LOGGED:
        assert [step for step, _ in logged[tag]] == [4, 8, 12], tag
    # loss and lr as results.json has them (TensorBoard stores float32)
    assert [v for _, v in logged["train/loss"]] == pytest.approx([h["loss"] for h in result.history], rel=1e-6)
    assert [v for _, v in logged["train/lr"]] == pytest.approx([h["lr"] for h in result.history], rel=1e-6)
    for tag in ("train/grad_norm", "train/step_ms", "train/memory_mib"):
        assert all(v > 0 and math.isfinite(v) for _, v in logged[tag]), tag


def test_auto_is_tensorboard_when_installed_and_none_is_off(tmp_path):
    assert trackers(AUTO) == ["tensorboard"] and trackers("none") == trackers(None) == []
    toy_fit(tmp_path, log_with="none")
    assert not (tmp_path / LOG_DIR).exists()


def test_unknown_or_missing_tracker_is_one_line():
    with pytest.raises(ConfigError) as e:
        RunConfig(log_with="tensorbored")
    assert str(e.value) == f"unknown log_with tracker 'tensorbored'; choose one of: auto, none, {', '.join(TRACKERS)}"
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    missing = next(t for t in TRACKERS if t not in available)
    with pytest.raises(ConfigError, match=f"^log_with={missing} needs the '{missing}' package: pip install {missing}$"):
        RunConfig(log_with=missing)


def test_an_earlier_runs_logs_are_refused_or_overwritten(tmp_path):
    (tmp_path / LOG_DIR).mkdir()
    (tmp_path / LOG_DIR / "events.out.tfevents.1").write_text("x")
    with pytest.raises(ConfigError) as e:
        claim_output_dir(RunConfig(output_dir=str(tmp_path)))
    assert str(e.value) == (f"output_dir {str(tmp_path)!r} holds an earlier run's outputs ({LOG_DIR}); "
                            f"resume={tmp_path}, choose another output_dir, or overwrite=true")
    claim_output_dir(RunConfig(output_dir=str(tmp_path), overwrite=True))
    assert not (tmp_path / LOG_DIR).exists()
