"""results.json is one typed object: written and read by the same code, its schema checked on read."""

import dataclasses
import json

import pytest

from finetune_opt.errors import ConfigError
from finetune_opt.measure.results import RESULTS_FILE, SCHEMA_VERSION, Results, format_table, load_results

RUN = Results(task="sst2", config={"output": {"output_dir": "runs/a"}, "loop": {"seed": 1}},
              device={"type": "cpu", "name": "x", "processes": 1},
              versions={"torch": "2"}, date="2026-11-25", optimizer={"name": "adamw", "implementation": "foreach"},
              metrics={"accuracy": 0.75}, history=[], timing={"step_ms": {"median": 10.0, "p90": 12.0},
                                                             "optimizer_step_ms": {"median": 1.0}},
              throughput={"samples_per_s": 3.0}, memory={"kind": "cpu_rss", "peak_rss_bytes": 2**20,
                                                         "optimizer_state_bytes": 0})


def test_results_round_trip_through_the_file(tmp_path):
    RUN.save(str(tmp_path))
    payload = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert payload["schema_version"] == SCHEMA_VERSION and payload["metrics"] == {"accuracy": 0.75}
    assert load_results(str(tmp_path)) == RUN


def test_a_run_without_a_logged_loss_formats(tmp_path):
    """Every step skipped as non-finite: final_train_loss is None, shown as '-'."""
    assert "| - |" in format_table([dataclasses.replace(RUN, final_train_loss=None)])


@pytest.mark.parametrize("content,message", [
    ({**RUN.to_dict(), "schema_version": 0}, f"has schema_version 0; this finetune_opt reads 1 to {SCHEMA_VERSION}$"),
    ({k: v for k, v in RUN.to_dict().items() if k != "schema_version"}, "has schema_version None;"),
    ({**RUN.to_dict(), "extra": 1}, f"does not match schema {SCHEMA_VERSION}: unknown fields extra$"),
    ({k: v for k, v in RUN.to_dict().items() if k not in ("metrics", "date")},
     f"does not match schema {SCHEMA_VERSION}: missing fields date, metrics$"),
    ([1, 2], "is not a results object \\(a JSON mapping\\), got list$"),
    ("{not json", "is not valid JSON \\(Expecting property name"),
    (b"\xff\xfe", "is not valid JSON \\("),
])
def test_unreadable_results_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / RESULTS_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=message) as e:
        load_results(str(tmp_path))
    assert "\n" not in str(e.value)


def test_a_directory_without_results_names_itself(tmp_path):
    with pytest.raises(ConfigError, match=f"^{str(tmp_path)!r} has no results.json"):
        load_results(str(tmp_path))
