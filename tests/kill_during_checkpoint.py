"""SIGKILL at seeded moments during checkpointing, then resume; used by tests/test_sigkill.py.

    python -m tests.kill_during_checkpoint OUT SEED KILLS

Runs in its own fresh process and forks one child per run (imports once; this process itself
runs no torch op, so the children's OpenMP is safe to fork): the uninterrupted reference run
(OUT/reference, a checkpoint after every step), then KILLS runs into OUT/killed, each resuming
from the newest complete checkpoint and killed by SIGKILL at a line executed by one of its next two
checkpoint saves (instrument_saves: our renames, Accelerate's save_state, shutil), save and line chosen by
`random.Random(SEED)`, the lines distinct; then one run that finishes. Killing at the n-th line is what makes the
moments reproducible. Writes OUT/attempts.json for the test to check; no assertions here.
"""

import filecmp
import json
import os
import random
import shutil
import signal
import sys

import accelerate.accelerator
import accelerate.checkpointing
import torch

from finetune_opt.train import checkpoint

from finetune_opt.train import engine
from finetune_opt.train.checkpoint import LOOP_STATE, RUN_CONFIG, STEP_DIR, find_checkpoint
from finetune_opt.config.run_config import RunConfig
from tests.test_reliability import Toy, toy_loader

STEPS = 30  # a checkpoint after each of steps 1..29 (none after the last: the run finishes instead)
FINAL = "final_parameters.pt"


# Where a save decides what lands on disk and when: our rename protocol, Accelerate's save_state
# (one file after another), shutil's tree operations. Lines inside torch.save / safetensors write
# one file and are not counted, so the moments spread over the save's steps, not over pickling.
TRACED = (checkpoint.__file__, accelerate.accelerator.__file__, accelerate.checkpointing.__file__, shutil.__file__)


def instrument_saves(kill_at: tuple[int, int] | None = None) -> list[int]:
    """From now on in this process, count the lines each checkpoint save executes in TRACED; with
    kill_at=(save, line), both from 1, SIGKILL this process at that line of that save. Returns
    the per-save line counts, filled as saves run."""
    counts = []
    save = engine.save_checkpoint

    def count_line(frame, event, arg):
        if event == "line":
            counts[-1] += 1
            if kill_at == (len(counts), counts[-1]):
                os.kill(os.getpid(), signal.SIGKILL)
        return count_line

    def new_frame(frame, event, arg):
        return count_line if frame.f_code.co_filename in TRACED else None

    def counting_save(*args, **kwargs):
        counts.append(0)
        sys.settrace(new_frame)
        try:
            return save(*args, **kwargs)
        finally:
            sys.settrace(None)

    engine.save_checkpoint = counting_save
    return counts


def in_child(job) -> int:
    """Run job() in a forked child; its wait status."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            job()
        except BaseException as e:  # noqa: BLE001 - reported through the exit code and stderr
            print(f"child failed: {type(e).__name__}: {e}", file=sys.stderr)
            code = 1
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def run(output_dir: str, resume: str | None = None):
    """The toy run of tests/test_reliability.py, a checkpoint after every step; its final parameters saved."""
    cfg = RunConfig(max_steps=STEPS, save_every=1, log_every=1, timing_warmup_steps=0, lr=1e-2, warmup_ratio=0,
                    memory_breakdown=False, output_dir=output_dir, resume=resume)
    accelerator = engine.make_accelerator(cfg)  # seeds; the model is built after it, as in the recipes
    model = Toy()
    engine.fit(cfg, accelerator, model, toy_loader(), lambda m: {"accuracy": 0.5})
    torch.save(model.state_dict(), os.path.join(output_dir, FINAL))


def checkpoint_entries(run_dir: str) -> list[str]:
    """Everything in run_dir/checkpoints: step-N dirs and whatever a kill left (step-N.tmp, .old)."""
    parent = os.path.join(run_dir, "checkpoints")
    return sorted(os.listdir(parent)) if os.path.isdir(parent) else []


def same_as_reference(step_dir: str, reference_dir: str) -> bool:
    """The oracle, independent of the manifest: every file of the reference run's checkpoint of that
    step is there with the same bytes (run_config.json, which names another output_dir, with the
    same name, and loop_state.json the same but for run_config.json's size)."""
    for name in os.listdir(reference_dir):
        mine = os.path.join(step_dir, name)
        if not os.path.isfile(mine):
            return False
        if name not in (RUN_CONFIG, LOOP_STATE) and not filecmp.cmp(mine, os.path.join(reference_dir, name), shallow=False):
            return False
    return _loop_state(step_dir) == _loop_state(reference_dir)


def _loop_state(step_dir: str) -> dict:
    with open(os.path.join(step_dir, LOOP_STATE)) as f:
        state = json.load(f)
    state["files"].pop(RUN_CONFIG)  # its size and hash differ with output_dir
    state["sha256"].pop(RUN_CONFIG)
    return state


def snapshot(killed: str, reference: str) -> dict:
    entries = checkpoint_entries(killed)
    steps = [d for d in entries if STEP_DIR.fullmatch(d)]
    return {"entries": entries, "steps": steps,
            "complete": [d for d in steps if same_as_reference(os.path.join(killed, "checkpoints", d),
                                                               os.path.join(reference, "checkpoints", d))]}


def main(out: str, seed: int, kills: int):
    rng = random.Random(seed)
    reference, killed = os.path.join(out, "reference"), os.path.join(out, "killed")

    def reference_run():
        counts = instrument_saves()
        run(reference)
        with open(os.path.join(out, "lines_per_save.json"), "w") as f:
            json.dump(counts, f)

    assert in_child(reference_run) == 0
    with open(os.path.join(out, "lines_per_save.json")) as f:
        lines = min(json.load(f))  # every save runs at least this many; a resumed one also clears stale dirs
    # Distinct lines, drawn without replacement: the kills hit `kills` different moments whatever
    # the number of traced lines (drawing with replacement could collide when it changes).
    line_numbers = rng.sample(range(1, lines + 1), kills)
    attempts = []
    for line_number in line_numbers:
        before = snapshot(killed, reference)
        resume = find_checkpoint(killed) if before["steps"] else None
        done = int(os.path.basename(resume).split("-")[1]) if resume else 0
        # the next save or the one after (never past the last checkpoint), at any of its events
        save_number = rng.randint(1, min(2, STEPS - 1 - done))

        def killed_run():
            instrument_saves(kill_at=(save_number, line_number))
            run(killed, resume=resume)

        status = in_child(killed_run)
        attempts.append({"before": before, "resumed_from": resume, "save_number": save_number,
                         "line_number": line_number,
                         "killed_by": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None})
    final_resume = find_checkpoint(killed)
    status = in_child(lambda: run(killed, resume=final_resume))
    with open(os.path.join(out, "attempts.json"), "w") as f:
        json.dump({"lines_per_save": lines, "attempts": attempts, "final_resumed_from": final_resume,
                   "final_status": status, "after": snapshot(killed, reference)}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
