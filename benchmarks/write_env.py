"""Write the machine's facts a GPU result is read with: device, driver, torch / CUDA, transformers,
accelerate and the date (no git commit: a copied working tree's HEAD can be stale).

    python3 benchmarks/write_env.py OUT.json cuda|cpu
"""

import json
import subprocess
import sys
import time

import accelerate
import torch
import transformers

path, device = sys.argv[1], sys.argv[2]
env = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
       "driver": subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip() if device == "cuda" else None,
       "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
       "accelerate": accelerate.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
with open(path, "w") as f:
    json.dump(env, f, indent=1)
print(env)
