"""`finetune-opt plan`: will a fine-tuning fit, and what does each optimizer and memory mode cost,
before a run.

The model is built from its config alone, on the meta device (no weights, no memory), and every
configuration of the registry x {full, LoRA} x {fp32, bf16 autocast} x {single or DDP, FSDP2} x
{optimizer in backward off, on} x {activation checkpointing off, on} is predicted by
`finetune_opt.measure.memory.predict_components`, the function that fills each run's results.json
`predicted` block: the plan and the run cannot drift apart. What cannot run is listed with the
reason, taken from the checks the run itself makes (`distributed.check_runs_here`, the in-backward
refusal, the SFT-only fields). The optimizer step's time is the bytes the entry's spec says one
step streams (`traffic_bytes`) over a bandwidth: measured on this machine, given, or a GPU's.
"""

import itertools
import math
import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from finetune_opt import distributed

from finetune_opt.models import cls_only_last_layer
from finetune_opt.errors import ConfigError, one_of
from finetune_opt.measure.memory import (PLANNED, lm_vocab_size, predict_components, predicted_total,
                                 unique_parameters)
from finetune_opt.optim import REGISTRY
from finetune_opt.optim.build import planned_param_groups
from finetune_opt.optim.in_backward import refusal as in_backward_refusal

# Datasheet figures (NVIDIA's product pages; SXM parts): memory as sold (decimal GB) and peak HBM
# bandwidth. Not measured here; a kernel reaches a share of it (fused AdamW reached 77% of the
# in-place-add bandwidth measured on an H200, benchmarks/results/NVIDIA_H200/).
GPUS = {
    "A100-80GB": {"memory": 80e9, "bandwidth_GBps": 2039.0, "source": "NVIDIA A100 80GB SXM datasheet: 80 GB HBM2e, 2,039 GB/s"},
    "H100-80GB": {"memory": 80e9, "bandwidth_GBps": 3350.0, "source": "NVIDIA H100 SXM datasheet: 80 GB HBM3, 3.35 TB/s"},
    "H200": {"memory": 141e9, "bandwidth_GBps": 4800.0, "source": "NVIDIA H200 SXM datasheet: 141 GB HBM3e, 4.8 TB/s"},
}

AXES = ("optimizer", "tuning", "precision", "distribution", "in_backward", "checkpointing")
ON_OFF = ("off", "on")


@dataclass(frozen=True)
class Setup:
    """What the plan is asked about (validated by `check_setup`)."""
    task: str
    max_length: int
    batch_size: int
    processes: int
    memory: float                     # bytes each rank may use
    memory_source: str
    bandwidth_GBps: float
    bandwidth_source: str
    lora_r: int = 16
    reserve: float = 0.0              # bytes a rank needs besides the step (CUDA context, runtime)
    device: str = "cpu"               # where it would train: decides the attention kernel's memory
    model: str | None = None
    model_config: dict | None = None
    only: dict = field(default_factory=dict)


# --- input ---------------------------------------------------------------------------------------

UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def parse_memory(text: str) -> float:
    """'80GiB', '80 GB', '512MiB', '1e9' (bytes) -> bytes; anything else one line naming the units."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m and (m.group(2) or "B")
    if not m or unit not in UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"bad memory size {text!r}; write a number > 0 with one of: {', '.join(UNITS)} (e.g. 80GiB)")
    return float(m.group(1)) * UNITS[unit]


def axis_values(processes: int) -> dict:
    """Each axis's values, in the order the plan lists them."""
    return {"optimizer": tuple(REGISTRY), "tuning": ("full", "lora"), "precision": ("fp32", "bf16"),
            # FSDP2 with one process has nothing to shard: the axis is then the single process alone
            "distribution": ("single",) if processes == 1 else ("ddp", "fsdp2"),
            "in_backward": ON_OFF, "checkpointing": ON_OFF}


def parse_only(items: list[str], processes: int) -> dict:
    """`--only optimizer=adamw,lion --only tuning=lora` -> {axis: allowed values}; an unknown axis
    or value is one line naming the valid ones."""
    values, only = axis_values(processes), {}
    for item in items or []:
        key, sep, wanted = item.partition("=")
        if (key not in values and key != "fits") or not sep:
            raise one_of("--only key", key, [f"{k}=..." for k in (*values, "fits")])
        choices = values[key] if key != "fits" else ("yes", "no")
        for v in wanted.split(","):
            if v not in choices:
                raise one_of(f"--only {key} value", v, choices)
        only[key] = set(wanted.split(","))
    return only


def parse_model_config(text: str | None, max_length: int) -> dict | None:
    """A YAML mapping (as the recipes' model_config=): checked as the run checks it."""
    if text is None:
        return None
    import yaml

    from finetune_opt.models.loading import check_model_config
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--model-config is not YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"--model-config must be a mapping like {{model_type: llama, hidden_size: 2048}}, got {text!r}")
    check_model_config(mapping, max_length)
    return mapping


# --- the model on the meta device ------------------------------------------------------------------

def meta_model(setup: Setup, lora: bool):
    """The run's model, built from its config on the meta device: the head the task's recipe
    loads, LoRA applied as the SFT recipe applies it (r, alpha 2r, every linear layer)."""
    import transformers

    from finetune_opt.models.loading import MODEL_HEADS, load_model, resolve_model_path
    from finetune_opt.models.peft import apply_peft
    from finetune_opt.tasks import CLASSIFICATION, REGRESSION, get_task
    task = get_task(setup.task)
    classify = task.problem_type in (CLASSIFICATION, REGRESSION)
    head, extra = ("classification", {"num_labels": task.num_labels or 2}) if classify else ("causal-lm", {})
    with torch.device("meta"):
        if setup.model_config:
            model = load_model(None, head=head, model_config=setup.model_config, **extra)
        else:
            config = _pretrained_config(resolve_model_path(setup.model), setup.model, **extra)
            model = getattr(transformers, MODEL_HEADS[head]).from_config(config)
        if lora:
            model = apply_peft(model, {"method": "lora", "r": setup.lora_r, "alpha": 2 * setup.lora_r})
    return model


def _pretrained_config(path: str, name: str, **extra):
    import transformers
    try:
        return transformers.AutoConfig.from_pretrained(path, **extra)
    except OSError as e:  # not a local directory and the Hub unreachable
        raise ConfigError(f"cannot read the config of model {name!r}: {str(e).splitlines()[0]}") from None


def shard_bytes(processes: int):
    """Bytes of a parameter on FSDP2's rank 0: dim 0 split in `processes` chunks (torch.chunk, so
    rank 0's is the largest, ceil(rows / N))."""
    def local(p) -> int:
        if p.dim() == 0:
            return p.element_size()
        return math.ceil(p.shape[0] / processes) * math.prod(p.shape[1:]) * p.element_size()
    return local


# --- what cannot run, from the run's own checks ------------------------------------------------------

def refusal(setup: Setup, spec, combo: dict, checkpointing_refusal: str | None) -> str | None:
    """Why this combination cannot run, in the words the run would refuse it with; None if it can."""
    from finetune_opt.config.sft import SFT_ONLY, check_sft_section
    from finetune_opt.tasks import get_task
    if combo["tuning"] == "lora":
        try:  # LoRA is the SFT recipe's peft block; other recipes refuse it
            sft = SimpleNamespace(**{**SFT_ONLY, "peft": {"method": "lora", "r": setup.lora_r}}, generation_examples=0)
            check_sft_section(get_task(setup.task), sft, SimpleNamespace(train_eval_examples=None))
        except ConfigError as e:
            return str(e)
    if combo["checkpointing"] == "on" and checkpointing_refusal:
        return checkpointing_refusal
    in_backward = combo["in_backward"] == "on"
    if combo["distribution"] == distributed.FSDP2:
        env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": str(setup.processes)}
        modes = {"implementation": spec.default_for(setup.device, sharded=True), "optimizer_in_backward": in_backward,
                 "compile_model": False, "generation_examples": 0}
        try:
            distributed.check_runs_here(modes, spec, env)
        except ConfigError as e:
            return str(e)
    if in_backward:  # as the run must set it: max_grad_norm=null (clipping needs every gradient)
        return in_backward_refusal(spec, spec.default_for(setup.device), grad_accum=1, max_grad_norm=None,
                                   mixed_precision="bf16" if combo["precision"] == "bf16" else "no",
                                   num_processes=setup.processes)
    return None


def checkpointing_refusal(model) -> str | None:
    """The run's own refusal for a model without gradient checkpointing (on a throwaway flag: the
    meta model's sizes do not change)."""
    import warnings

    from finetune_opt.models.loading import enable_gradient_checkpointing
    try:
        with warnings.catch_warnings():  # transformers' deprecation notice of its old flag's name
            warnings.simplefilter("ignore", FutureWarning)
            enable_gradient_checkpointing(model)
    except ConfigError as e:
        return str(e)
    return None


# --- one row ---------------------------------------------------------------------------------------

def predict_row(setup: Setup, model, spec, combo: dict) -> dict:
    """Bytes per rank by component, their total, whether it fits, the optimizer step's time."""
    fsdp = combo["distribution"] == distributed.FSDP2
    shards = setup.processes if fsdp else 1
    implementation = spec.default_for(setup.device, sharded=fsdp)  # what a run there takes (config/schema.py)
    groups = planned_param_groups(spec.name, model, implementation)
    config = getattr(model, "get_base_model", lambda: model)().config
    cls_only = _cls_only(setup.task, config)
    components = predict_components(
        unique_parameters(model), groups, spec, implementation, config,
        (setup.batch_size, setup.max_length), "bf16" if combo["precision"] == "bf16" else "no", cls_only=cls_only,
        checkpointed=combo["checkpointing"] == "on", lm_vocab=lm_vocab_size(model),
        in_backward=combo["in_backward"] == "on", state_shards=shards,
        local_bytes=shard_bytes(shards) if fsdp else None, ddp=combo["distribution"] == distributed.DDP,
        device_type=setup.device)
    total = predicted_total(components)
    traffic = spec.traffic_bytes_for(groups) / shards
    return {**combo, "implementation": implementation, **components, "total": total,
            "fits": total + setup.reserve <= setup.memory, "headroom": setup.memory - setup.reserve - total,
            "traffic_bytes": traffic, "step_ms": 1e3 * traffic / (setup.bandwidth_GBps * 1e9), "refused": None}


def _cls_only(task_name: str, config) -> bool:
    """The run's default (last_layer_cls_only null): [CLS]-only last layer on a classification task
    where the model supports it."""
    from finetune_opt.tasks import CLASSIFICATION, REGRESSION, get_task
    if get_task(task_name).problem_type not in (CLASSIFICATION, REGRESSION):
        return False
    return cls_only_last_layer.refusal(config.model_type, getattr(config, "is_decoder", False)) is None


def combinations(setup: Setup):
    """Every combination of the axes (the registry iterated, never a list kept by hand), filtered."""
    values = axis_values(setup.processes)
    for combo in itertools.product(*values.values()):
        combo = dict(zip(values, combo))
        if all(combo[k] in allowed for k, allowed in setup.only.items() if k != "fits"):
            yield combo


def plan(setup: Setup) -> list[dict]:
    """Every row: predicted, or refused with its reason; sorted runnable-first by total bytes."""
    import warnings
    with warnings.catch_warnings():  # transformers' deprecation notice of a flag peft reads
        warnings.simplefilter("ignore", FutureWarning)
        return _plan(setup)


def _plan(setup: Setup) -> list[dict]:
    # the full model answers the checkpointing question for both (LoRA wraps the same base); the
    # LoRA model is built only once a LoRA row is not refused (peft fails on a task's other heads)
    models = {"full": meta_model(setup, lora=False)}
    ckpt_refusal = checkpointing_refusal(models["full"])
    rows = []
    for combo in combinations(setup):
        spec = REGISTRY[combo["optimizer"]]
        reason = refusal(setup, spec, combo, ckpt_refusal)
        if reason:
            rows.append({**combo, "refused": reason})
            continue
        if combo["tuning"] not in models:
            models[combo["tuning"]] = meta_model(setup, lora=True)
        rows.append(predict_row(setup, models[combo["tuning"]], spec, combo))
    if "fits" in setup.only:
        rows = [r for r in rows if r["refused"] is None and ("yes" if r["fits"] else "no") in setup.only["fits"]]
    return sorted(rows, key=lambda r: (r["refused"] is not None, r.get("total") or 0, r.get("step_ms") or 0))


# --- bandwidth ----------------------------------------------------------------------------------------

def measure_bandwidth(megabytes: int = 64, repeats: int = 5) -> float:
    """This machine's memory bandwidth in GB/s: an in-place `a.add_(b)` (reads a and b, writes a:
    what an elementwise optimizer step does), median of `repeats`, in about a tenth of a second."""
    n = megabytes * 2**20 // 4
    a, b = torch.ones(n), torch.ones(n)
    a.add_(b)  # first touch: page faults are not bandwidth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a.add_(b)
        times.append(time.perf_counter() - start)
    return 3 * n * 4 / sorted(times)[len(times) // 2] / 1e9


# --- output -------------------------------------------------------------------------------------------

SHORT = {"parameters": "params", "gradients": "grads", "optimizer_state": "state",
         "activations_and_workspace": "activations", "optimizer_step_temporaries": "step temps",
         "ddp_gradient_buckets": "DDP buckets"}


def _unit(rows: list[dict]) -> tuple[str, int]:
    """GiB, or MiB for a plan whose largest total is under 1 GiB (a tiny model)."""
    largest = max((r["total"] for r in rows if not r["refused"]), default=0)
    return ("GiB", 2**30) if largest >= 2**30 else ("MiB", 2**20)


def _size(n, scale: int) -> str:
    return "-" if n is None else f"{n / scale:.2f}"


def table(setup: Setup, rows: list[dict]) -> str:
    """The console table: bytes per rank, runnable rows by total, then the refused with their reason."""
    unit, scale = _unit(rows)
    head = ["optimizer", "tuning", "prec", "dist", "in-bwd", "ckpt",
            *(SHORT[c] for c in PLANNED), "total", "fits", "step ms"]
    lines = [_header(setup, unit), "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        keys = [r["optimizer"], r["tuning"], r["precision"], _dist(setup, r), r["in_backward"], r["checkpointing"]]
        if r["refused"]:
            lines.append("| " + " | ".join(keys) + f" | refused: {r['refused']} |")
            continue
        cells = [_size(r[c], scale) for c in PLANNED] + [_size(r["total"], scale), "yes" if r["fits"] else "NO",
                                                         f"{r['step_ms']:.{1 if r['step_ms'] >= 1 else 2}f}"]
        lines.append("| " + " | ".join(keys + cells) + " |")
    return "\n".join(lines)


def _dist(setup: Setup, r: dict) -> str:
    return r["distribution"] if setup.processes == 1 else f"{r['distribution']} x{setup.processes}"


def _header(setup: Setup, unit: str) -> str:
    what = setup.model or "model_config " + ", ".join(f"{k}={v}" for k, v in setup.model_config.items())
    return (f"plan: {what}; task {setup.task}, batch {setup.batch_size} x {setup.max_length} tokens per rank, "
            f"{setup.processes} process(es) on {setup.device}; {unit} per rank; memory {setup.memory / 2**30:.1f} GiB "
            f"({setup.memory_source}), reserve {setup.reserve / 2**30:.2f} GiB; step ms = bytes the optimizer "
            f"step streams / {setup.bandwidth_GBps:.0f} GB/s ({setup.bandwidth_source}); in-bwd rows assume "
            f"max_grad_norm=null\n")


def to_json(setup: Setup, rows: list[dict]) -> dict:
    from dataclasses import asdict
    inputs = {k: (sorted(v) if isinstance(v, set) else v) for k, v in asdict(setup).items() if k != "only"}
    return {"inputs": {**inputs, "only": {k: sorted(v) for k, v in setup.only.items()}},
            "components": list(PLANNED), "rows": rows}


def plot(setup: Setup, rows: list[dict], path: str) -> str:
    """Stacked bars of each runnable row's components (GiB per rank), the rank's memory as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if not r["refused"]]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.22 * len(rows)))
    labels = [f"{r['optimizer']} {r['tuning']} {r['precision']} {_dist(setup, r)} bwd:{r['in_backward']} "
              f"ckpt:{r['checkpointing']}" for r in rows]
    left = [0.0] * len(rows)
    for name, part in _bar_parts():
        width = [part(r) / 2**30 for r in rows]
        ax.barh(range(len(rows)), width, left=left, label=name)
        left = [a + b for a, b in zip(left, width)]
    ax.axvline((setup.memory - setup.reserve) / 2**30, color="black", ls="--", lw=1, label="memory - reserve")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="GiB per rank (predicted)", title="finetune-opt plan")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _bar_parts():
    """The segments of a bar, adding up to the row's total: the step's temporaries show only where
    they exceed the activations (the two are never alive together, see memory.predicted_total)."""
    def get(r, c):
        return r[c] or 0
    return [("params", lambda r: get(r, "parameters")), ("grads", lambda r: get(r, "gradients")),
            ("state", lambda r: get(r, "optimizer_state")), ("DDP buckets", lambda r: get(r, "ddp_gradient_buckets")),
            ("activations", lambda r: get(r, "activations_and_workspace")),
            ("step temps above activations",
             lambda r: max(0, get(r, "optimizer_step_temporaries") - get(r, "activations_and_workspace")))]


# --- the command --------------------------------------------------------------------------------------

def setup_from_args(args) -> Setup:
    """Every input checked before anything is built or written (one line, exit 2, as the CLI does)."""
    from finetune_opt.tasks import get_task
    get_task(args.task)
    for name in ("max_length", "batch_size", "processes", "lora_r"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}")
    if args.model is None and args.model_config is None:
        raise ConfigError("plan needs --model NAME|DIR or --model-config MAPPING")
    memory, memory_source, bandwidth, bandwidth_source = _machine(args)
    gpu = args.gpu is not None or args.gpu_memory is not None or torch.cuda.is_available()
    return Setup(device="cuda" if gpu else "cpu", task=args.task, max_length=args.max_length, batch_size=args.batch_size, processes=args.processes,
                 memory=memory, memory_source=memory_source, bandwidth_GBps=bandwidth,
                 bandwidth_source=bandwidth_source, lora_r=args.lora_r,
                 reserve=parse_memory(args.reserve) if args.reserve else 0.0, model=args.model,
                 model_config=parse_model_config(args.model_config, args.max_length),
                 only=parse_only(args.only, args.processes))


def _machine(args) -> tuple:
    """(memory bytes, its source, bandwidth GB/s, its source): a named GPU's datasheet figures,
    overridden by --gpu-memory / --bandwidth; without either, this machine's RAM and bandwidth."""
    if args.gpu is not None and args.gpu not in GPUS:
        raise one_of("--gpu", args.gpu, GPUS)
    gpu = GPUS.get(args.gpu)
    if args.gpu_memory is not None:
        memory, memory_source = parse_memory(args.gpu_memory), "--gpu-memory"
    elif gpu:
        memory, memory_source = gpu["memory"], gpu["source"]
    else:
        import psutil
        memory, memory_source = float(psutil.virtual_memory().total), "this machine's RAM"
    if args.bandwidth is not None:
        if not args.bandwidth > 0:
            raise ConfigError(f"--bandwidth must be GB/s > 0, got {args.bandwidth}")
        return memory, memory_source, args.bandwidth, "--bandwidth"
    if gpu:
        return memory, memory_source, gpu["bandwidth_GBps"], f"{args.gpu} datasheet peak"
    return memory, memory_source, measure_bandwidth(), "this machine, in-place add measured now"


def run(args) -> str:
    setup = setup_from_args(args)
    rows = plan(setup)
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(to_json(setup, rows), f, indent=1)
    if args.png:
        plot(setup, rows, args.png)
    return table(setup, rows)


def add_parser(sub):
    p = sub.add_parser("plan", help="will a fine-tuning fit: predicted memory per rank and optimizer step time "
                                    "for every optimizer x memory mode, before a run")
    p.add_argument("--model", help="HF Hub name or local directory (only its config is read)")
    p.add_argument("--model-config", help="a YAML mapping, as the recipes' model_config=, e.g. "
                                          "'{model_type: llama, hidden_size: 4096, ...}' (wins over --model)")
    p.add_argument("--task", default="gsm8k", help="the task: decides the head, and LoRA (SFT tasks only)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per row: the longest batch")
    p.add_argument("--batch-size", type=int, default=8, help="rows per process (micro-batch)")
    p.add_argument("--processes", type=int, default=1, help="GPUs (or CPU processes): DDP, or FSDP2 over them")
    p.add_argument("--gpu", help=f"a GPU's datasheet memory and bandwidth: one of {', '.join(GPUS)}")
    p.add_argument("--gpu-memory", help="memory per rank, e.g. 80GiB or 80GB (default: --gpu's, else this machine's RAM)")
    p.add_argument("--bandwidth", type=float, help="GB/s for the step time (default: --gpu's, else measured here)")
    p.add_argument("--reserve", help="memory per rank that is not the step's (CUDA context, runtime), e.g. 2GiB")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha 2r, every linear layer)")
    p.add_argument("--only", action="append", metavar="KEY=V1,V2",
                   help=f"keep rows whose KEY is one of the values; keys: {', '.join(AXES)}, fits (yes/no)")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--png", help="write stacked bars of the runnable rows here")
    return p
