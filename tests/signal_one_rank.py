"""torchrun entry for tests/test_reliability.py: the GLUE recipe with SIGTERM sent to rank 1 alone,
right after its step 3 (an event of the run, not a time).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/signal_one_rank.py ARGS...
"""

import os
import runpy
import signal
import sys

from finetune_opt.train import engine

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "finetune_glue.py")
after_step = engine.Meter.after_step


def after_step_then_signal_rank_1(self, state, outcome, **kwargs):
    after_step(self, state, outcome, **kwargs)
    if state.step == 3 and os.environ.get("RANK") == "1":
        os.kill(os.getpid(), signal.SIGTERM)


engine.Meter.after_step = after_step_then_signal_rank_1
sys.argv = [SCRIPT, *sys.argv[1:]]
runpy.run_path(SCRIPT, run_name="__main__")
