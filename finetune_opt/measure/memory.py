"""Where one training step's memory goes, measured and predicted.

Components (bytes): parameters, gradients, optimizer state (by dtype), the optimizer step's
temporaries (what `step()` allocates above the state and frees again: foreach's per-group
intermediates, none for a fused kernel), and activations + workspace (what the forward pass holds
at its peak above the step's start: tensors saved for backward, attention scores, kernel
workspace).

Measured around one step's phases (forward, backward, optimizer step):
- CUDA: the caching allocator's own counters (`memory_allocated`, a peak reset at each phase).
- CPU: torch's CPU allocations as the profiler records them (`profile_memory=True`: every
  allocation and free with its size and time), summed into a running total. Peak RSS of the
  process would include loading the model and data, and glibc's reuse of freed heap, so it cannot
  show a step's temporaries.
Both see allocations relative to the phase's start; parameters, gradients and state are read from
the tensors themselves (exact bytes).

Predicted: parameters and gradients from the model, state from the optimizer spec's cost model,
temporaries from the implementation (see `predict_step_temporaries`), activations from Korthikanti
et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", Sec. 4.1) per layer:
sbh(16e+2) + a s^2 b (2e+1) bytes for sequence s, batch b, hidden h, heads a, activation element
size e (their 34 sbh + 5 a s^2 b at e = 2), which assumes eager attention that keeps the scores.
"""

import os
import sys
from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch
from torch._C._autograd import DeviceType

from finetune_opt.models import cls_only_last_layer
from finetune_opt.measure.timing import storage_tensors, tensor_storage_bytes

PHASES = ("forward", "backward", "optimizer_step")


# --- measurement ------------------------------------------------------------------------------------

class _Recording:
    def note_gradients(self, model):
        """Bytes of the gradients alive after backward, read before they are freed."""
        self.gradients = gradient_bytes(model)


class CudaPhaseProbe(_Recording):
    """Allocated bytes at each phase's start and end, and its peak, from the CUDA allocator."""
    method = "cuda caching allocator (memory_allocated, peak reset per phase)"

    def __init__(self, device):
        self.device, self.phases, self.gradients = device, {}, None
        self.peak_above_step_start = None

    @contextmanager
    def step(self):
        torch.cuda.synchronize(self.device)
        start = torch.cuda.memory_allocated(self.device)
        yield
        self.peak_above_step_start = max(ph["start"] + ph["peak_above_start"] for ph in self.phases.values()) - start

    @contextmanager
    def phase(self, name):
        torch.cuda.synchronize(self.device)
        start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        torch.cuda.synchronize(self.device)
        self.phases[name] = {"start": start, "peak_above_start": torch.cuda.max_memory_allocated(self.device) - start,
                             "end_above_start": torch.cuda.memory_allocated(self.device) - start}


@contextmanager
def _no_stderr_lines():
    """Kineto writes `USDT: ... profiler_start` / `profiler_stop` to file descriptor 2 (not through
    Python) at every start and stop: noise in every CPU run's output. Only those two calls are
    silenced; the profiled step's own messages still show."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class CpuPhaseProbe(_Recording):
    """The same figures from the profiler's record of every CPU allocation and free. Absolute
    allocated bytes are unknown to the profiler (it starts counting at zero), so `start` is None."""
    method = "torch.profiler CPU allocation events (profile_memory=True)"

    def __init__(self, device=None):
        self.phases, self.gradients = {}, None
        self.peak_above_step_start = None

    @contextmanager
    def step(self):
        from torch.profiler import ProfilerActivity, profile
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _no_stderr_lines():
            prof.start()
        try:
            yield
        finally:
            with _no_stderr_lines():
                prof.stop()
        self._read(prof.profiler.kineto_results.events())

    @contextmanager
    def phase(self, name):
        from torch.profiler import record_function
        with record_function(f"finetune_opt::{name}"):
            yield

    def _read(self, events):
        ranges = {e.name().removeprefix("finetune_opt::"): (e.start_ns(), e.start_ns() + e.duration_ns())
                  for e in events if e.name().startswith("finetune_opt::")}
        allocations = sorted((e.start_ns(), e.nbytes()) for e in events
                             if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
        def peak_and_end(begin, end) -> tuple[int, int]:  # above the running total at `begin`
            total = peak = 0
            for t, n in allocations:
                if begin <= t <= end:
                    total += n
                    peak = max(peak, total)
            return peak, total

        for name, (begin, end) in ranges.items():
            peak, end_total = peak_and_end(begin, end)
            self.phases[name] = {"start": None, "peak_above_start": peak, "end_above_start": end_total}
        if ranges:  # from the first phase's start (forward) to the last phase's end
            self.peak_above_step_start = peak_and_end(min(b for b, _ in ranges.values()),
                                                      max(e for _, e in ranges.values()))[0]


def phase_probe(device: torch.device):
    return CudaPhaseProbe(device) if device.type == "cuda" else CpuPhaseProbe(device)


class NoProbe:
    """What the engine uses on every step but the measured one."""
    gradients = peak_above_step_start = None

    @contextmanager
    def step(self):
        yield

    def phase(self, name):
        return nullcontext()

    def note_gradients(self, model):  # unprobed steps pay nothing
        pass


NO_PROBE = NoProbe()


def bytes_by_dtype(tensors) -> dict:
    out = defaultdict(int)
    for t in tensors:
        for inner in storage_tensors(t):
            out[str(inner.dtype).removeprefix("torch.")] += inner.numel() * inner.element_size()
    return dict(out)


def gradient_bytes(model) -> int:
    return sum(tensor_storage_bytes(p.grad) for p in unique_parameters(model) if p.grad is not None)


def unique_parameters(model) -> list[torch.Tensor]:
    return list({id(p): p for p in model.parameters()}.values())  # tied weights once


def measured_breakdown(model, optimizer, phases: dict, gradients: int | None) -> dict:
    """Measured components of the probed step; `gradients`: bytes of gradients alive after backward."""
    params = unique_parameters(model)
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    forward, backward, step = (phases.get(p, {}) for p in PHASES)
    out = {
        "parameters": sum(tensor_storage_bytes(p) for p in params),
        "parameters_by_dtype": bytes_by_dtype(params),
        "gradients": gradients,
        "optimizer_state": sum(tensor_storage_bytes(t) for t in state),
        "optimizer_state_by_dtype": bytes_by_dtype(state),
        # what the step allocates and frees again; state a first step creates is state, not temporary
        "optimizer_step_temporaries": (step["peak_above_start"] - max(0, step["end_above_start"]) if step else None),
        "activations_and_workspace": forward.get("peak_above_start"),
        "backward_peak_above_forward_start": (forward.get("end_above_start", 0) + backward["peak_above_start"]
                                              if backward else None),
        "phases": phases,
    }
    return out


# --- prediction -----------------------------------------------------------------------------------

def predict_step_temporaries(spec, implementation: str, param_groups, local_bytes=None) -> int:
    """What an optimizer step allocates beyond its state, from the implementation's rule
    (`Implementation.temporaries`): a multiple of its largest parameter group (foreach: torch's
    _multi_tensor_adam keeps sqrt(v) for every tensor of the group at once), of its largest tensor
    (a per-tensor step), or nothing (a fused kernel). `local_bytes(p)`: the bytes of p this rank
    holds (default: read from the tensor, an FSDP2 DTensor's local shard)."""
    local_bytes = local_bytes or tensor_storage_bytes
    scope, multiple = spec.implementations[implementation].temporaries
    tensor_bytes = [[local_bytes(p) for p in g["params"]] for g in param_groups]
    if scope == "group":
        return int(multiple * max(sum(b) for b in tensor_bytes))
    if scope == "tensor":
        return int(multiple * max(max(b, default=0) for b in tensor_bytes))
    return 0


def predict_activations(config, batch_size: int, seq_len: int, element_size: int,
                        cls_only: bool = False, checkpointed: bool = False, lm_vocab: int | None = None,
                        logits_element_size: int | None = None, scores_kept: bool = True) -> int | None:
    """Korthikanti et al. 2022's per-layer activation bytes, times the layers; None for a model
    whose config does not name the sizes. A last layer computed for [CLS] only
    (finetune_opt.models.cls_only_last_layer) keeps its input, keys and values for every position
    (3 sbh e) and the rest for one position. With gradient checkpointing each layer keeps only
    its input (sbh e) and one layer's activations exist at a time (their Sec. 4.2, full
    recomputation). A causal LM (`lm_vocab`: its output vocabulary) also holds its logits, which
    their per-layer count leaves out and which dominate a large-vocabulary model at long
    sequences (see `predict_logits`; `logits_element_size`: the LM head's output dtype, default
    `element_size`). `scores_kept`: whether attention keeps its a s^2 b score matrices for
    backward (see `attention_scores_kept`); without them a layer holds sbh(16e+2) alone."""
    h = getattr(config, "hidden_size", None)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not (h and layers and heads):
        return None
    s, b, e = seq_len, batch_size, element_size

    def layer(queries: int) -> int:
        return queries * b * h * (16 * e + 2) + (heads * queries * s * b * (2 * e + 1) if scores_kept else 0)

    logits = predict_logits(b, s, lm_vocab, logits_element_size or e) if lm_vocab else 0
    if checkpointed:  # the logits are freed by backward before the first layer is recomputed
        return layers * s * b * h * e + max(layer(s), logits)
    if not cls_only:
        return layers * layer(s) + logits
    return (layers - 1) * layer(s) + layer(1) + 3 * s * b * h * e + logits


def predict_logits(batch_size: int, seq_len: int, vocab: int, element_size: int) -> int:
    """A causal LM's output at the forward pass's peak: the logits in the compute dtype, their fp32
    copy for the loss (the same tensor in fp32), and cross-entropy's fp32 log-softmax, kept for backward."""
    return batch_size * seq_len * vocab * (element_size + (4 if element_size != 4 else 0) + 4)


def predict_components(params, param_groups, spec, implementation: str, config, batch_shape: tuple,
                       mixed_precision: str, *, cls_only: bool = False, checkpointed: bool = False,
                       lm_vocab: int | None = None, in_backward: bool = False, state_shards: int = 1,
                       local_bytes=None, ddp: bool = False, device_type: str = "cpu") -> dict:
    """The one memory model: each component's predicted bytes for one rank. The run fills
    results.json's `predicted` with it (from its model and optimizer) and `finetune-opt plan` calls it
    for every configuration it lists (from a model on the meta device), so the two cannot drift.
    `params`: every parameter once; `param_groups`: the optimizer's groups, hyperparameters filled
    in; `local_bytes(p)`: the bytes of p this rank holds (default: read from the tensor). In backward
    each gradient is freed by its hook, so none is alive after backward and the step has no phase
    of its own. The optimizer state is 1/`state_shards` of the whole model's (FSDP2). Under DDP
    (`ddp`) each rank also holds the reducer's gradient buckets (see `ddp_gradient_buckets`).
    `device_type`: where it trains ("cpu", "cuda"), which decides the attention kernel's memory."""
    local_bytes = local_bytes or tensor_storage_bytes
    trainable = [p for p in params if p.requires_grad]
    element, logits_element = element_sizes(mixed_precision, trainable)
    return {
        "parameters": sum(local_bytes(p) for p in params),
        "gradients": 0 if in_backward else sum(local_bytes(p) for p in trainable),
        "optimizer_state": spec.state_bytes_for(param_groups) // state_shards,
        "optimizer_step_temporaries": (None if in_backward else
                                       predict_step_temporaries(spec, implementation, param_groups, local_bytes)),
        "activations_and_workspace": predict_activations(config, *batch_shape, element, cls_only,
                                                         checkpointed=checkpointed, lm_vocab=lm_vocab,
                                                         logits_element_size=logits_element,
                                                         scores_kept=attention_scores_kept(config, device_type)),
        "ddp_gradient_buckets": ddp_gradient_buckets(trainable, local_bytes) if ddp else 0,
    }


def ddp_gradient_buckets(trainable, local_bytes) -> int:
    """DDP with torch's default gradient_as_bucket_view=False (Accelerate passes no other) copies
    every gradient into flat all-reduce buckets it allocates at wrap time, as large as the
    gradients together: memory on each rank beside the gradients, though outside a step's own peak.
    The second step's forward rebuilds them once in the order gradients arrived (no recurring
    cost); the engine does not probe that step (see train)."""
    return sum(local_bytes(p) for p in trainable)


def attention_scores_kept(config, device_type: str) -> bool:
    """Whether attention keeps its score matrices for backward. Eager attention does. SDPA runs a
    fused kernel that keeps only a log-sum-exp per row, except where the kernel cannot take the
    attention dropout: on a CPU, torch 2.13 falls back to the unfused math for dropout > 0 (a BERT
    in training), which keeps them. Flash-attention-2 never keeps them. Measured on CPU: a 2-layer
    Llama (no attention dropout) held 0.91x of the prediction without scores."""
    kind = getattr(config, "_attn_implementation", None) or "eager"
    if kind == "eager":
        return True
    dropout = max((getattr(config, k, 0) or 0) for k in ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop"))
    return kind == "sdpa" and device_type == "cpu" and dropout > 0


def predicted_total(components: dict) -> int:
    """The step's peak the components add up to: parameters, gradients and state, plus the larger
    of the forward pass's activations and the optimizer step's temporaries (backward frees the
    activations before the step allocates its temporaries). The gradients are counted whole
    beside the activations: backward creates the last layers' gradients while the first layers'
    activations are still held: an upper bound when every component is right (on CPU the measured
    step peaks were 0.88-1.10x of it, the spread of the activation predictions;
    benchmarks/results/cpu_2core/plan/verify.md)."""
    get = lambda k: components.get(k) or 0  # noqa: E731 (None: not modelled, or no such phase)
    return (get("parameters") + get("gradients") + get("optimizer_state") + get("ddp_gradient_buckets")
            + max(get("activations_and_workspace"), get("optimizer_step_temporaries")))


def element_sizes(mixed_precision: str, trainable) -> tuple[int, int]:
    """(bytes per saved activation element, bytes per element of the matmul outputs such as the
    logits). Autocast over fp32 weights keeps the activations at the weights' size: the residual
    stream, the norms and the softmax stay fp32, and each matmul saves a bf16 copy of its fp32 input
    beside it (a 2-layer Llama on CPU: bf16 autocast held 0.98x the fp32 run's forward peak), so
    Korthikanti's half-precision e = 2 holds only for weights that are themselves half precision."""
    weights = trainable[0].element_size()
    return weights, (2 if mixed_precision in ("bf16", "fp16") else weights)


def lm_vocab_size(model) -> int | None:
    """The output vocabulary of a model with an LM head (None for an encoder with a task head)."""
    base = getattr(model, "get_base_model", lambda: model)()
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return getattr(head, "out_features", None) if isinstance(head, torch.nn.Linear) else None


def predicted_breakdown(model, optimizer, spec, implementation: str, batch_shape: tuple, mixed_precision: str,
                        in_backward: bool = False, state_shards: int = 1, ddp: bool = False,
                        device_type: str = "cpu") -> dict:
    """predict_components for a built model and optimizer. Under FSDP2 parameters and gradients
    are read from this rank's shards."""
    params = unique_parameters(model)
    return predict_components(params, optimizer.param_groups, spec, implementation, getattr(model, "config", None),
                              batch_shape, mixed_precision, cls_only=cls_only_last_layer.is_applied(model),
                              checkpointed=_checkpointed(model), lm_vocab=lm_vocab_size(model),
                              in_backward=in_backward, state_shards=state_shards, ddp=ddp, device_type=device_type)


def _checkpointed(model) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()
    # transformers 5.24 renamed the flag; reading the old name there warns (FutureWarning) on every run
    new_name = hasattr(type(base), "is_activation_checkpointing")
    return bool(getattr(base, "is_activation_checkpointing" if new_name else "is_gradient_checkpointing", False))


COMPONENTS = ("parameters", "gradients", "optimizer_state", "optimizer_step_temporaries", "activations_and_workspace")
PLANNED = (*COMPONENTS, "ddp_gradient_buckets")  # what predicted_total adds up


def compare(predicted: dict, measured: dict) -> dict:
    """measured / predicted per component (None where either is missing or zero)."""
    return {k: (measured[k] / predicted[k] if predicted.get(k) and measured.get(k) is not None else None)
            for k in COMPONENTS}


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType
    return accelerator.distributed_type == DistributedType.FSDP


def memory_breakdown(run, training_step) -> dict:
    """The engine's record of its probed step: measured, predicted, and their ratio; and, because
    the probed step's batch is whichever came last in warm-up (SST-2: [32, 7] where the longest is
    [32, 64]), the prediction at the run's longest batch, the one that decides whether it fits."""
    cfg, probe = run.cfg, training_step.probe
    model = run.accelerator.unwrap_model(run.model)
    measured = measured_breakdown(model, run.optimizer, probe.phases, probe.gradients)
    # the step's own peak above what it started with (parameters + state): what in-backward lowers
    measured["step_peak_above_start"] = probe.peak_above_step_start
    measured["ddp_gradient_buckets"] = ddp_bucket_bytes(run.model)
    shards = run.accelerator.num_processes if _sharded(run.accelerator) else 1
    ddp = run.model is not model and isinstance(run.model, torch.nn.parallel.DistributedDataParallel)

    def predict(batch_shape):
        return predicted_breakdown(model, run.optimizer, run.spec, cfg.optimizer.implementation, batch_shape,
                                   cfg.precision.mixed_precision, in_backward=cfg.precision.optimizer_in_backward,
                                   state_shards=shards, ddp=ddp, device_type=run.accelerator.device.type)

    predicted = predict(training_step.batch_shape)
    rows, length = training_step.batch_shape
    longest_shape = (rows, max(length, cfg.data.max_length))
    longest = predict(longest_shape)
    return {"method": probe.method, "batch_shape": list(training_step.batch_shape),
            "optimizer_in_backward": cfg.precision.optimizer_in_backward, "measured": measured, "predicted": predicted,
            "predicted_total": predicted_total(predicted),
            "measured_over_predicted": compare(predicted, measured),
            "longest_batch": {"batch_shape": list(longest_shape), "measured": longest_shape == training_step.batch_shape,
                              "basis": "predicted at batch rows x max_length, which no batch exceeds "
                                       "(measured only where the probed batch was that long)",
                              "predicted": longest, "predicted_total": predicted_total(longest)}}


def ddp_bucket_bytes(wrapped) -> int | None:
    """Bytes of a DDP model's all-reduce buckets, from its reducer's own record (None: not DDP)."""
    if not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return None
    data = wrapped._get_ddp_logging_data()
    sizes = data.get("bucket_sizes")
    return sum(int(x) for x in str(sizes).split(",")) if sizes else None
