"""The optimizer registry: one `OptimizerSpec` per optimizer, and nothing else to edit to add one.

`list-optimizers`, config validation, the recipes, the study, the benchmarks and the tests all
read these entries. Dependencies are chosen as each field's maintainers would: torch.optim where
it has the algorithm (SGD, Adam/AdamW, Adafactor, Muon), the authors' own package for schedule-free
(`schedulefree`), PyTorch's own low-bit optimizers for 8/4-bit states (`torchao`); Lion has no
PyTorch package from its authors, so its dozen-line rule lives in `lion.py`.

Learning-rate defaults are fine-tuning starting points, not tuned values: `finetune-opt study`
tunes each optimizer's lr around its default.
"""

import json
import math
from dataclasses import replace
from importlib.resources import files

import torch

from finetune_opt.errors import one_of
from finetune_opt.optim.lion import Lion
from finetune_opt.optim.muon import (
    MuonWithAdamW,
    muon_param_groups,
    muon_state_bytes,
    muon_traffic_bytes,
    newton_schulz_flops,
)
from finetune_opt.optim.spec import (
    FOREACH_OR_LOOP,
    TORCH_MULTI_TENSOR,
    Implementation,
    OptimizerSpec,
    betas,
    boolean,
    compiled_update,
    choice,
    elementwise,
    fused_devices,
    integer,
    number,
)

ADAM_HYPERPARAMS = {"betas": betas((0.9, 0.999)), "eps": number(0, low_open=True, default=1e-8),
                    "amsgrad": boolean(False)}


def _adam_state(shape, dtype, group):
    return (3 if group.get("amsgrad") else 2) * math.prod(shape) * dtype.itemsize


def _adam_traffic(shape, dtype, group):
    # read p, g, m, v; write p, m, v (+ read and write v_max with AMSGrad)
    return (9 if group.get("amsgrad") else 7) * math.prod(shape) * dtype.itemsize


def _sgd_state(shape, dtype, group):
    return (1 if group.get("momentum") else 0) * math.prod(shape) * dtype.itemsize


def _sgd_nesterov_rule(hp: dict) -> str | None:
    """torch.optim.SGD raises this only when built (after data and model are loaded)."""
    if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
        return (f"nesterov=true needs momentum > 0 and dampening 0, got momentum {hp['momentum']} and dampening "
                f"{hp['dampening']}; set nesterov=false, or momentum > 0 and dampening=0")
    return None


def _sgd_traffic(shape, dtype, group):
    return (5 if group.get("momentum") else 3) * math.prod(shape) * dtype.itemsize


def _adafactor_state(shape, dtype, group):
    """Factored second moment: a row and a column vector for >= 2-D tensors, full for vectors."""
    if len(shape) < 2:
        return math.prod(shape) * dtype.itemsize
    return (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) * dtype.itemsize


def _adafactor_traffic(shape, dtype, group):
    # p read twice (RMS, update) and written once; g read twice (row/col norms, update); the
    # factors are negligible next to that.
    return 5 * math.prod(shape) * dtype.itemsize + _adafactor_state(shape, dtype, group) * 2


TORCHAO_MIN_SIZE = 4096  # torchao quantises the moments of tensors with at least this many elements


def _lowbit_cost(bits: int, block_size: int):
    """torchao low-bit AdamW: two moments of `bits` each, one fp32 scale per block and a
    2**bits-entry fp32 code map per tensor."""
    def state(shape, dtype, group):
        n = math.prod(shape)
        if n < TORCHAO_MIN_SIZE or n % block_size:  # torchao (as bitsandbytes) keeps these in full precision
            return 2 * n * dtype.itemsize
        return 2 * (n * bits // 8 + 4 * math.ceil(n / block_size) + 4 * 2 ** bits)

    def traffic(shape, dtype, group):
        # read p, g and both quantised moments; write p and both moments
        return 4 * math.prod(shape) * dtype.itemsize + 2 * state(shape, dtype, group)
    return state, traffic


def _torchao_spec(bits: int, block_size: int) -> OptimizerSpec:
    state, traffic = _lowbit_cost(bits, block_size)
    return OptimizerSpec(
        f"adamw_{bits}bit",
        f"AdamW with {bits}-bit block-quantised moments (torchao; Dettmers et al. 2022, Li et al. 2023)",
        f"torchao.optim:AdamW{bits}bit",
        # no amsgrad: torchao's max() on a quantised state fails to compile (torchao 0.18)
        {k: ADAM_HYPERPARAMS[k] for k in ("betas", "eps")},
        default_lr=5e-5,
        # torchao compiles its own per-tensor step; there is no eager or fused variant to pick.
        # torchao compiles one step per tensor: its dequantised fp32 m and v are that tensor's temporaries
        implementations={"compiled": Implementation(devices=("cpu", "cuda"), temporaries=("tensor", 2.0))},
        default_implementation="compiled",
        state_bytes=state, traffic_bytes=traffic,
        paper="AdamW (Loshchilov & Hutter 2019) with quantised states; parity against float64 AdamW "
              "within the quantisation error",
        extra="lowbit",
        param_dtypes=(torch.float32, torch.bfloat16),  # its kernels compute in fp32 (no float64)
        # tests/fsdp_parity_worker.py: 3 steps on DTensor shards ended 0.72 away from one process
        # (torch 2.13 CPU, torchao 0.18), and its compiled step failed on a later entry's shapes
        fsdp2_refusal="its quantised states on FSDP2 DTensor shards gave wrong updates here "
                      "(torchao 0.18); use DDP (accelerate_configs/multi_gpu.yaml) or another optimizer",
        tensor_lr=True, quantised_from=TORCHAO_MIN_SIZE,
    )


BNB_BLOCK = 256          # bitsandbytes' 8-bit blockwise quantisation: one fp32 absmax per block
BNB_MIN_8BIT_SIZE = 4096  # its default min_8bit_size: smaller tensors keep fp32 moments
BNB_QMAP_BYTES = 4 * 256  # the 256-entry fp32 code map each moment's state points to


def _bnb_cost(moments: int):
    """bitsandbytes 8-bit optimizers: per moment one uint8 per element, one fp32 absmax per
    256-element block and a reference to its fp32 code map; under 4096 elements fp32 moments
    whatever the parameter's dtype. The code map is one tensor per optimizer that every
    parameter's state holds: counted per parameter, as the state dict (and measure) count it,
    so the prediction is the measured bytes (<= 2 KiB x tensors above what is allocated)."""
    def state(shape, dtype, group):
        n = math.prod(shape)
        if n < BNB_MIN_8BIT_SIZE:
            return moments * 4 * n
        return moments * (n + 4 * math.ceil(n / BNB_BLOCK) + BNB_QMAP_BYTES)

    def traffic(shape, dtype, group):
        # read p and g, write p; read and write every moment and its scales
        return 3 * math.prod(shape) * dtype.itemsize + 2 * state(shape, dtype, group)
    return state, traffic


def _bnb_spec(name: str, description: str, cls: str, hyperparams: dict, devices: tuple, **fields) -> OptimizerSpec:
    state, traffic = _bnb_cost(2 if "Adam" in cls else 1)
    return OptimizerSpec(
        name, description + " (bitsandbytes; Dettmers et al. 2022)", f"bitsandbytes.optim:{cls}", hyperparams,
        # bitsandbytes' own kernel: one per tensor (CUDA), dequantise-update-requantise in one pass
        implementations={"fused": Implementation(devices=devices, temporaries=(None, 0.0))},
        default_implementation="fused", state_bytes=state, traffic_bytes=traffic, extra="bnb",
        quantised_from=BNB_MIN_8BIT_SIZE,
        param_dtypes=(torch.float32, torch.bfloat16, torch.float16),  # its kernels: no float64
        fsdp2_refusal="bitsandbytes' 8-bit kernels step plain tensors, not FSDP2's DTensor shards (not tried "
                      "here); use DDP (accelerate_configs/multi_gpu.yaml) or another optimizer",
        **fields)


# Defaults by device: the fastest implementation each device's committed measurement timed
# (tests/test_optim_defaults.py reads them). CPU: benchmarks/results/cpu_2core/optimizer_step_fast_steps*
# (BERT-base fp32, one thread, 2026-12-03): fused Adam 103-142 ms and SGD 78 ms, compiled Lion 101,
# schedule-free 115 (their compile on the first step: seconds with Inductor's disk cache warm,
# 0.5-2.6 minutes cold); Adafactor's C++ kernel 69-75 ms against compiled 105-141
# (optimizer_step_adafactor_fused, 2026-12-04; built once per machine, ~30 s). Elsewhere
# `default_implementation` (CUDA: foreach but where timed).
CPU_FUSED = {"cpu": "fused"}
CPU_COMPILED = {"cpu": "compiled"}

_SPECS = (
    OptimizerSpec(
        "adam_l2", "Adam with coupled L2: weight_decay*p is added to the gradient (Kingma & Ba 2015)",
        torch.optim.Adam, ADAM_HYPERPARAMS, default_lr=5e-5,
        implementations=TORCH_MULTI_TENSOR, default_implementation="foreach", device_defaults=CPU_FUSED,
        state_bytes=_adam_state, traffic_bytes=_adam_traffic,
        paper="Kingma & Ba 2015, Algorithm 1; L2 term added to the gradient",
        fixed_kwargs={"decoupled_weight_decay": False}, structural=("amsgrad",),
    ),
    OptimizerSpec(
        "adamw", "AdamW: decoupled weight decay p -= lr*wd*p (Loshchilov & Hutter 2019)",
        torch.optim.AdamW, ADAM_HYPERPARAMS, default_lr=5e-5,
        implementations=TORCH_MULTI_TENSOR, default_implementation="foreach",
        # H200 (benchmarks/results/NVIDIA_H200/optimizer_step*): fused 1.3 ms, foreach 2.8, for-loop 12.2
        device_defaults={**CPU_FUSED, "cuda": "fused"},
        state_bytes=_adam_state, traffic_bytes=_adam_traffic,
        paper="Loshchilov & Hutter 2019, Algorithm 2", structural=("amsgrad",),
    ),
    OptimizerSpec(
        "adamw_fused", "AdamW with torch's fused one-kernel step (fused=True)",
        torch.optim.AdamW, ADAM_HYPERPARAMS, default_lr=5e-5,
        implementations={"fused": TORCH_MULTI_TENSOR["fused"]}, default_implementation="fused",
        state_bytes=_adam_state, traffic_bytes=_adam_traffic,
        paper="Loshchilov & Hutter 2019, Algorithm 2", structural=("amsgrad",),
    ),
    OptimizerSpec(
        "sgd", "SGD with (Nesterov) momentum and coupled L2 (Sutskever et al. 2013): the baseline",
        torch.optim.SGD,
        {"momentum": number(0, 1, high_open=True, default=0.9), "dampening": number(0, 1, default=0.0),
         "nesterov": boolean(False)},
        # (no "compiled": dynamo fails on SGD's momentum-buffer init in torch 2.13, a
        # SpeculationLogDivergence; the fused kernel is the fast path anyway)
        # (torch 2.13 has no DTensor rule for _fused_sgd_: fused cannot step FSDP2 shards)
        default_lr=1e-2, implementations={**{k: v for k, v in TORCH_MULTI_TENSOR.items() if k != "compiled"},
                                          "fused": replace(TORCH_MULTI_TENSOR["fused"], steps_shards=False)},
        default_implementation="foreach", device_defaults=CPU_FUSED,
        state_bytes=_sgd_state, traffic_bytes=_sgd_traffic,
        paper="Sutskever et al. 2013 (momentum as in torch.optim.SGD: first step buf = g)",
        default_weight_decay=0.0, structural=("momentum",), rules=(_sgd_nesterov_rule,),
    ),
    OptimizerSpec(
        "adafactor", "Adafactor (Shazeer & Stern 2018) as torch runs it: factored second moments, step "
                     "rho_t = min(lr, 1/sqrt(t)) x RMS(p), so lr until t = 1/lr^2 (1e6 steps at 1e-3)",
        torch.optim.Adafactor,
        # d: torch's update-clipping threshold, which it requires >= 1 (the paper's d = 1)
        {"beta2_decay": number(None, 0, default=-0.8), "d": number(1, default=1.0),
         # eps is the paper's eps2, the floor on the parameter RMS; eps1 is the dtype's epsilon
         "eps": number(0, low_open=True, default=1e-3)},
        default_lr=1e-3,
        # compiled: g^2's column sums in 16-row blocks keep one partial, 1/16 of the matrix stepped
        # fused: a C++ kernel built on first use (CPU only), two passes per tensor; its buffers are
        # column-sized vectors, not tensors: no temporaries counted
        implementations={**FOREACH_OR_LOOP,
                         "compiled": replace(compiled_update("finetune_opt.optim.adafactor:CompiledAdafactor"),
                                             temporaries=("tensor", 1 / 16)),
                         "fused": Implementation({"foreach": False}, subclass="finetune_opt.optim.adafactor_fused:FusedAdafactor",
                                                 devices=("cpu",), temporaries=(None, 0.0), kernel="adafactor",
                                                 takes_found_inf=True)},
        default_implementation="foreach", device_defaults=CPU_FUSED,
        state_bytes=_adafactor_state, traffic_bytes=_adafactor_traffic,
        # The paper's relative step is min(1e-2, 1/sqrt(t)): it decays from step 10^4 on. torch
        # caps it at lr instead, so at the default lr (1e-3) it is a constant 1e-3, a tenth of the
        # paper's, for the first million steps: no decay in any fine-tuning run.
        paper="Shazeer & Stern 2018, Algorithms 4-5, as torch.optim.Adafactor: rho_t = min(lr, 1/sqrt(t)) "
              "(the paper's 1e-2 cap replaced by lr)",
        default_weight_decay=0.0, needs_whole_tensors=True,
        build=lambda cls, groups, kw: cls(groups, **{**kw, "eps": (None, kw["eps"])}),
    ),
    OptimizerSpec(
        "lion", "Lion: sign of an interpolated momentum, one state buffer (Chen et al. 2023)",
        Lion, {"betas": betas((0.9, 0.99))}, default_lr=1.5e-5,
        implementations={**FOREACH_OR_LOOP,
                         "compiled": compiled_update("finetune_opt.optim.lion:CompiledLion", takes_found_inf=True)},
        default_implementation="foreach", device_defaults=CPU_COMPILED,
        state_bytes=elementwise(1), traffic_bytes=elementwise(5),  # m; read p g m, write p m
        paper="Chen et al. 2023, Algorithm 2", default_weight_decay=0.1,
    ),
    OptimizerSpec(
        "muon", "Muon (Newton-Schulz orthogonalised momentum) on hidden matrices, AdamW on the rest",
        MuonWithAdamW,
        {"momentum": number(0, 1, high_open=True, default=0.95), "nesterov": boolean(True),
         "ns_steps": integer(1, 99, 5), "adjust_lr_fn": choice("match_rms_adamw", "match_rms_adamw", "original"),
         "adamw_betas": betas((0.9, 0.999)), "adamw_eps": number(0, low_open=True, default=1e-8)},
        default_lr=5e-5,
        # Muon's own step is per matrix (matmuls); the flag picks the AdamW half's kernel. Its
        # momentum is torch's: two in-place lerps per matrix beside Newton-Schulz's matmuls (not timed apart).
        implementations={"foreach": Implementation({"foreach": True}),
                         "for-loop": Implementation({"foreach": False}),
                         "fused": Implementation({"foreach": False, "fused": True}, devices=fused_devices())},
        # foreach was also the fastest on CPU (BERT-base fp32, 2026-12-04: 8.65 s vs 8.94 fused, 8.96
        # for-loop; Newton-Schulz at 88-98% of a bf16 matmul in all three: optimizer_step_muon)
        default_implementation="foreach",
        state_bytes=muon_state_bytes, traffic_bytes=muon_traffic_bytes, step_flops=newton_schulz_flops,
        paper="Jordan et al. 2024 (Newton-Schulz); Liu et al. 2025 (match_rms_adamw, decoupled decay)",
        param_groups=muon_param_groups, needs_whole_tensors=True,
    ),
    OptimizerSpec(
        "adamw_schedule_free", "Schedule-free AdamW: iterate averaging instead of an LR schedule "
                               "(the authors' schedulefree package, default variant)",
        "schedulefree:AdamWScheduleFree",
        {"betas": betas((0.9, 0.999)), "eps": number(0, low_open=True, default=1e-8),
         "warmup_steps": integer(0, 10**9, 0), "r": number(0, default=0.0),
         "weight_lr_power": number(0, default=2.0)},
        default_lr=1e-4,
        implementations={**FOREACH_OR_LOOP,
                         "compiled": compiled_update("finetune_opt.optim.schedule_free:CompiledAdamWScheduleFree")},
        default_implementation="foreach", device_defaults=CPU_COMPILED,
        # z, v; read y g z v, write y z v (the package's eager steps also write the normalised
        # gradient back into p.grad, an eighth stream the algorithm does not need)
        state_bytes=elementwise(2), traffic_bytes=elementwise(7),
        # What runs is the package's AdamWScheduleFree, not the paper's literal Algorithm 1 (which
        # puts sqrt(1 - beta2^t) into gamma_t and so into the averaging weights): 0.31 apart in
        # displacement after test_optim_parity's 12 steps, the package 1e-14.
        paper="schedulefree.AdamWScheduleFree (Defazio et al. 2024, the authors' code): bias-corrected "
              "v in the denominator, averaging weights w_t = t^r lr_max^weight_lr_power, c_t = w_t / sum w, "
              "linear warm-up, decay at y",
        train_eval_modes=True, owns_lr_schedule=True, extra="schedulefree",
    ),
    _torchao_spec(8, 256),
    _torchao_spec(4, 128),
    _bnb_spec("adamw_bnb_8bit", "AdamW with 8-bit blockwise-quantised moments", "AdamW8bit",
              {k: ADAM_HYPERPARAMS[k] for k in ("betas", "eps")}, ("cpu", "cuda"), default_lr=5e-5,
              paper="AdamW (Loshchilov & Hutter 2019) with 8-bit states; parity against float64 AdamW within "
                    "the quantisation error"),
    # Paged: state in CUDA unified memory, evicted to host RAM under pressure. On CPU
    # bitsandbytes 0.50 runs it unpaged with a warning: refused there instead of relabelled.
    _bnb_spec("paged_adamw_8bit", "AdamW with 8-bit moments in paged (CUDA unified) memory", "PagedAdamW8bit",
              {k: ADAM_HYPERPARAMS[k] for k in ("betas", "eps")}, ("cuda",), default_lr=5e-5,
              paper="AdamW (Loshchilov & Hutter 2019) with 8-bit states; parity against float64 AdamW within "
                    "the quantisation error",
              elsewhere="paging is CUDA memory (bitsandbytes would run it unpaged on cpu); on cpu choose "
                        "adamw_bnb_8bit, the same 8-bit states"),
    _bnb_spec("lion_bnb_8bit", "Lion with an 8-bit blockwise-quantised momentum", "Lion8bit",
              {"betas": betas((0.9, 0.99))}, ("cpu", "cuda"), default_lr=1.5e-5, default_weight_decay=0.1,
              paper="Chen et al. 2023, Algorithm 2, with an 8-bit state; parity against float64 Lion within "
                    "the quantisation error"),
)
REGISTRY = {s.name: s for s in _SPECS}


def get_optimizer_spec(name: str) -> OptimizerSpec:
    if name not in REGISTRY:
        raise one_of("optimizer", name, REGISTRY)
    return REGISTRY[name]


def runs_on(device_type: str) -> list[str]:
    """The entries whose default implementation on `device_type` runs there."""
    return [name for name, s in REGISTRY.items() if s.supports(s.default_for(device_type), device_type)]


def measured_step_costs() -> dict:
    """device type -> entry -> its measured step times and multiple of fused AdamW's step
    (step_costs.json, made from the committed benchmark results by benchmarks/step_costs.py)."""
    return json.loads(files("finetune_opt.optim").joinpath("step_costs.json").read_text())


def list_optimizers() -> list[dict]:
    """One row per entry: hyperparameters with defaults, implementations with devices and which
    skip a non-finite step on the device, the defaults by device, measured step costs, extra."""
    costs = measured_step_costs()
    return [
        {
            "name": s.name,
            "description": s.description,
            "class": s.class_path,
            "hyperparameters": {k: _jsonable(h.default) for k, h in s.all_hyperparams.items()},
            "default_implementation": s.default_implementation,
            "device_defaults": dict(s.device_defaults),  # where a device's measurement chose another
            "implementations": {name: list(impl.devices) for name, impl in s.implementations.items()},
            "skip_nonfinite_on_device": [name for name, impl in s.implementations.items() if impl.takes_found_inf],
            "measured_step": {device: by_entry[s.name] for device, by_entry in costs.items() if s.name in by_entry},
            "train_eval_modes": s.train_eval_modes,
            "extra": s.extra,
            "paper": s.paper,
        }
        for s in REGISTRY.values()
    ]


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value
