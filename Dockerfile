# finetune_opt on CUDA, single or multi GPU through Accelerate.
#   docker build -t finetune-opt .
#   docker run --gpus all --rm -v "$PWD/data:/data" -v hf-cache:/cache -v "$PWD/runs:/runs" finetune-opt \
#     --config_file accelerate_configs/multi_gpu.yaml --num_processes 4 \
#     -m finetune_opt.recipes.finetune_glue --config sst2 data_dir=/data/sst2 output_dir=/runs/sst2-adamw
# The recipes and their configs come from the installed package: -m finetune_opt.recipes.<name> --config <name>
# (`finetune-opt configs` lists the configs; a mounted YAML file works too: --config /data/my.yaml).
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    FINETUNE_OPT_DATA=/data

WORKDIR /opt/finetune_opt
# Dependencies first (changes rarely), then the code: rebuilds after a code edit reuse the layer.
COPY pyproject.toml README.md ./
COPY finetune_opt/__init__.py finetune_opt/__init__.py
# The optional optimizers (schedule-free, torchao low-bit) and LoRA (peft), pinned for a reproducible
# image. torchao is tied to torch releases: 0.14.1 is the one for this base's torch 2.9.0 (0.18.0,
# pinned before, fails to import there: torch.nn.functional has no ScalingType). This combination,
# torch 2.9.0+cu128 with these pins, ran the optimizer parity, state-dict and 2-process FSDP2 tests
# in a virtualenv on a CPU (2026-12-03); it has not run on a GPU.
RUN pip install --no-cache-dir . schedulefree==1.4.1 torchao==0.14.1 peft==0.21.2 && pip uninstall -y finetune_opt
COPY finetune_opt finetune_opt
COPY accelerate_configs accelerate_configs
RUN pip install --no-cache-dir --no-deps .

# Data (GLUE TSV / WikiText dirs), the HF cache (models, datasets), and run outputs.
VOLUME ["/data", "/cache", "/runs"]
ENTRYPOINT ["accelerate", "launch"]
CMD ["--config_file", "accelerate_configs/single_gpu.yaml", "-m", "finetune_opt.recipes.finetune_glue", "--config", "sst2", "output_dir=/runs/sst2-adamw"]
