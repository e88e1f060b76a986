"""How a run is spread over processes: single, DDP, FSDP2 or DeepSpeed, in one place.

The launcher says which: `accelerate launch --config_file accelerate_configs/fsdp2.yaml` sets
ACCELERATE_USE_FSDP / FSDP_VERSION (DeepSpeed: ACCELERATE_USE_DEEPSPEED) and WORLD_SIZE in each
process's environment. `requested` reads them before anything is loaded, `check_runs_here`
refuses in one line what cannot run on this machine, and `make_accelerator` (engine.py) builds
exactly what was asked for, or nothing: a requested sharding is never silently downgraded.

Why `promote_to_fsdp` exists: Accelerate turns an FSDP request into FSDP only for GPU-like
distributed types (accelerate/state.py); on a CPU box its state says MULTI_CPU and it runs DDP
without a word. Its FSDP2 preparation itself (`fully_shard` on a named process group, DTensor
parameters, sharded checkpoints) runs on gloo unchanged, so on CPU the engine sets the state to
FSDP right after construction, as Accelerate's own FSDP branch would have, and from there the CPU
run takes the same code path as a GPU run.
"""

import os
from collections import Counter

import torch
from torch import nn

from finetune_opt.errors import ConfigError

SINGLE, DDP, FSDP2, DEEPSPEED = "single", "ddp", "fsdp2", "deepspeed"
DISTRIBUTIONS = (SINGLE, DDP, FSDP2, DEEPSPEED)


def device_type() -> str:
    """What a run here trains on: the CUDA GPUs where there are any (make_accelerator asks for
    them), else the CPU. The optimizer's default implementation is chosen for it."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _flag(env, name: str) -> bool:
    return env.get(name, "false").lower() in ("1", "true", "yes")


def world_size(env=os.environ) -> int:
    try:
        return max(1, int(env.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def requested(env=os.environ) -> str:
    """The distribution the launcher asked for (one of DISTRIBUTIONS)."""
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return DEEPSPEED
    if _flag(env, "ACCELERATE_USE_FSDP"):
        if env.get("FSDP_VERSION", "1") != "2":
            raise ConfigError(f"FSDP version {env.get('FSDP_VERSION', '1')} is not supported; set fsdp_version: 2 "
                              f"in the accelerate config (accelerate_configs/fsdp2.yaml)")
        return FSDP2
    return DDP if world_size(env) > 1 else SINGLE


def fsdp2_requested(env=os.environ) -> bool:
    """The launcher asked for FSDP2: each entry's default implementation must step its shards."""
    return requested(env) == FSDP2


def check_runs_here(modes: dict, spec, env=os.environ) -> str:
    """Refuse, before anything is loaded or written, a distribution this machine cannot run or an
    option that cannot run under it. Returns the distribution. `modes`: the settings sharding
    cannot run with ({implementation, optimizer_in_backward, generation_examples, compile_model}, as configured)."""
    distribution = requested(env)
    cuda = torch.cuda.is_available()
    if distribution == DEEPSPEED and not cuda:
        raise ConfigError("DeepSpeed needs CUDA GPUs (Accelerate runs DDP instead on a CPU); on a CPU use "
                          "accelerate_configs/fsdp2.yaml for sharding or multi_gpu.yaml for DDP")
    if distribution == FSDP2 and not cuda and world_size(env) < 2:
        raise ConfigError("FSDP2 on a CPU needs at least 2 processes (gloo): accelerate launch --config_file "
                          "accelerate_configs/fsdp2.yaml --num_processes 2 ...")
    if distribution == DEEPSPEED and spec.needs_whole_tensors:
        raise ConfigError(f"optimizer {spec.name} updates whole matrices and cannot step DeepSpeed's flattened "
                          f"shards; use FSDP2 (accelerate_configs/fsdp2.yaml) or DDP (multi_gpu.yaml)")
    if distribution == FSDP2 and spec.fsdp2_refusal:
        raise ConfigError(f"optimizer {spec.name} cannot step FSDP2 shards: {spec.fsdp2_refusal}")
    if distribution == FSDP2 and not spec.implementations[modes["implementation"]].steps_shards:
        shards = [name for name, how in spec.implementations.items() if how.steps_shards]
        raise ConfigError(f"{spec.name} ({modes['implementation']}) cannot step FSDP2 shards: torch has no DTensor "
                          f"rule for its kernel; choose implementation one of: {', '.join(shards)}")
    if distribution in (FSDP2, DEEPSPEED):
        for key, refused, why in _SHARDED_REFUSALS:
            if refused(modes, spec):
                raise ConfigError(f"{key} cannot run with {distribution}: {why}")
    return distribution


# (config key, whether this config uses it, why it cannot run on sharded parameters)
_SHARDED_REFUSALS = (
    ("optimizer_in_backward", lambda modes, spec: modes["optimizer_in_backward"],
     "a sharded gradient is written by the reduce-scatter after backward, not accumulated by autograd, "
     "so the per-parameter hooks never fire; set optimizer_in_backward=false"),
    ("generation_examples", lambda modes, spec: modes["generation_examples"] > 0,
     "greedy decoding runs a different number of forward passes on each rank, and every sharded forward "
     "needs all ranks; set generation_examples=0 (held-out loss is still measured) or run the generation on one process"),
    ("compile_model", lambda modes, spec: modes["compile_model"],
     "not verified with FSDP2 here; set compile_model=false"),
)


def fsdp_plugin():
    """Accelerate's FSDP plugin, read from the launcher's environment (the fsdp_* keys of the
    accelerate config), as Accelerate builds it itself; kept so a CPU state can be promoted."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    return FullyShardedDataParallelPlugin()


def promote_to_fsdp(accelerator, plugin):
    """On a CPU, turn Accelerate's MULTI_CPU state into the FSDP state its GPU branch would have
    built (see the module docstring); a no-op where Accelerate already chose FSDP."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType
    if accelerator.distributed_type == DistributedType.FSDP:
        return
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise ConfigError(f"FSDP2 was requested but Accelerate chose {accelerator.distributed_type.value}; "
                          f"refusing to run unsharded")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def repeated_block_classes(model: nn.Module) -> list[str]:
    """Class names of the model's repeated blocks (the members of its longest ModuleList of one
    class: BertLayer, GPT2Block, LlamaDecoderLayer): FSDP2's units when the config names none."""
    best = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            kinds = Counter(type(m).__name__ for m in module)
            if len(kinds) == 1:
                best = list(module)
    return [type(best[0]).__name__] if best else []


def set_wrap_units(accelerator, model: nn.Module):
    """FSDP2 units: the config's transformer_layer_cls_to_wrap, else the repeated blocks. (The
    model's own `_no_split_modules` would also name containers such as BertEmbeddings, whose
    word embeddings Accelerate then shards a second time.)"""
    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = repeated_block_classes(model)


def running(accelerator) -> str:
    """The distribution Accelerate is running (one of DISTRIBUTIONS)."""
    from accelerate.utils import DistributedType
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return FSDP2
    if kind == DistributedType.DEEPSPEED:
        return DEEPSPEED
    return DDP if accelerator.num_processes > 1 else SINGLE


def describe(accelerator) -> dict:
    """What ran, for results.json, the console and the compare report."""
    distribution = running(accelerator)
    out = {"type": distribution, "processes": accelerator.num_processes}
    if distribution == FSDP2:
        plugin = accelerator.state.fsdp_plugin
        out.update(sharding=f"parameters, gradients and optimizer state over {accelerator.num_processes} ranks",
                   units=list(plugin.transformer_cls_names_to_wrap or []),
                   reshard_after_forward=bool(plugin.reshard_after_forward),
                   state_dict_type=str(getattr(plugin.state_dict_type, "name", plugin.state_dict_type)),
                   backend=torch.distributed.get_backend() if torch.distributed.is_initialized() else None)
    elif distribution == DEEPSPEED:
        out.update(sharding="ZeRO stage " + str(accelerator.state.deepspeed_plugin.zero_stage))
    elif distribution == DDP:
        out.update(sharding="none (every rank holds the whole model and optimizer state)",
                   backend=torch.distributed.get_backend() if torch.distributed.is_initialized() else None)
    return out


def label(distribution: dict | None) -> str:
    """'FSDP2 x2', 'DDP x2', 'single'; '-' for results from before it was recorded."""
    if not distribution:
        return "-"
    name = {SINGLE: "single", DDP: "DDP", FSDP2: "FSDP2", DEEPSPEED: "DeepSpeed"}[distribution["type"]]
    return name if distribution["type"] == SINGLE else f"{name} x{distribution['processes']}"


_HOST_GROUP = {}  # the default process group -> a group on it that reduces host (CPU) tensors


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any (a stop signal reaches one rank; all must stop
    after the same step). Reduced over gloo on host memory: on a GPU, a flag on the device would
    have to be read back, and that read waits for every kernel queued so far."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return flag
    world = torch.distributed.group.WORLD
    if world not in _HOST_GROUP:  # every rank makes its first call at the same step
        on_host = torch.distributed.get_backend() == "gloo"
        _HOST_GROUP[world] = None if on_host else torch.distributed.new_group(backend="gloo")
    total = torch.tensor([int(flag)])
    torch.distributed.all_reduce(total, group=_HOST_GROUP[world])
    return bool(total.numpy()[0])
