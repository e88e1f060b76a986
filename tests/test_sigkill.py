"""SIGKILL at 20 seeded moments during checkpointing (tests/kill_during_checkpoint.py), each run
resuming the last: no kill leaves a step-N directory that is not a complete checkpoint, every
resume takes the newest complete one, and the final parameters equal the uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys

import torch

from tests.conftest import REPO
from tests.kill_during_checkpoint import FINAL, STEPS

KILLS, SEED = 20, 0


def test_sigkill_during_checkpointing_then_resume(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tests.kill_during_checkpoint", str(tmp_path), str(SEED), str(KILLS)],
                       capture_output=True, text=True, cwd=REPO, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    log = json.loads((tmp_path / "attempts.json").read_text())
    attempts = log["attempts"]
    assert [a["killed_by"] for a in attempts] == [signal.SIGKILL] * KILLS  # each kill landed inside a save
    for a in attempts:
        before = a["before"]
        assert before["steps"] == before["complete"], before  # a step-N dir is always a whole checkpoint
        newest = before["complete"][-1] if before["complete"] else None
        assert (a["resumed_from"] and os.path.basename(a["resumed_from"])) == newest
    # The kills hit different moments: some left a half-written save behind (step-N.tmp / .old) ...
    leftovers = [a for a in attempts if set(a["before"]["entries"]) - set(a["before"]["steps"])]
    assert leftovers
    # ... and the run still advanced to the end, through the checkpoints the kills spared.
    assert log["final_status"] == 0 and log["after"]["steps"] == log["after"]["complete"]
    assert int(os.path.basename(log["final_resumed_from"]).split("-")[1]) < STEPS
    final, reference = (torch.load(tmp_path / d / FINAL) for d in ("killed", "reference"))
    assert final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)
