"""Cheap, honest measurement of a training run.

On a GPU, step times come from device events recorded around each phase and read back only when
the engine logs (or at the end), so timing adds no host synchronisation to a step: synchronising
every step would stall the queue of kernels the host runs ahead with, and time that stall. On CPU
the host clock is the device clock. The first `warmup_steps` steps (allocator growth, kernel
selection, torch.compile) are excluded.
"""

import resource
import time

import numpy as np
import psutil
import torch
from torch.distributed.tensor import DTensor


class HostClock:
    """perf_counter marks: where the host runs the work (CPU), its clock times it."""

    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start


def event_class(device: torch.device):
    """The device's stream-event class (CUDA, XPU); None where work runs on the host (CPU)."""
    return {"cuda": torch.cuda.Event, "xpu": torch.xpu.Event}.get(device.type)


class DeviceClock:
    """Timing events recorded on the device's stream; `seconds` waits for the later one only when
    it is read, at a logging step."""

    def __init__(self, device: torch.device):
        self.event_class = event_class(device)

    def mark(self):
        event = self.event_class(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def clock_for(device: torch.device):
    return HostClock() if event_class(device) is None else DeviceClock(device)


def percentiles(values) -> dict:
    if not len(values):
        return {"median": None, "p10": None, "p90": None, "mean": None}
    a = np.asarray(values, dtype=float)
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90)), "mean": float(a.mean())}


def _count(value) -> int:
    """A count kept on the device until it is read (a tensor), or already a number."""
    return int(value) if torch.is_tensor(value) else value


class StepTimer:
    """begin_step / begin_optimizer / end_optimizer / end_step around each optimizer update. Marks
    and token counts (tensors on the device) are kept as they are and resolved in `flush`, which the
    engine calls on logging steps, and in `summary`."""

    def __init__(self, device: torch.device, warmup_steps: int):
        self.clock = clock_for(device)
        self.warmup_steps = warmup_steps
        self.steps_seen = 0
        self.step_s, self.optimizer_s, self.warmup_s = [], [], []
        self.step_cpu_s = []  # this process's CPU time per step: on a shared machine, what waiting for a core does not inflate
        self.samples = self.tokens = self.positions = 0
        self.pending = []     # ended steps not yet read back: (marks, optimizer marks, cpu s, counts)

    def begin_step(self):
        self._t0 = self.clock.mark()
        self._cpu0 = time.process_time()
        self._opt = []

    def begin_optimizer(self):
        self._t_opt = self.clock.mark()

    def end_optimizer(self):
        self._opt.append((self._t_opt, self.clock.mark()))

    def end_step(self, samples, tokens, positions=None):
        """`tokens`: real ones; `positions`: real + padding (the model's work), default = tokens.
        Counts may be tensors on the device: they are read in `flush`."""
        self.pending.append(((self._t0, self.clock.mark()), self._opt, time.process_time() - self._cpu0,
                             (samples, tokens, tokens if positions is None else positions)))

    def flush(self) -> list[float]:
        """Read back the steps ended since the last flush; their seconds (warm-up steps too, for logging)."""
        seconds = []
        for (t0, t1), opt, cpu, counts in self.pending:
            elapsed = self.clock.seconds(t0, t1)
            seconds.append(elapsed)
            self.steps_seen += 1
            if self.steps_seen > self.warmup_steps:
                self.step_s.append(elapsed)
                self.step_cpu_s.append(cpu)
                self.optimizer_s.append(sum(self.clock.seconds(a, b) for a, b in opt))
                samples, tokens, positions = (_count(c) for c in counts)
                self.samples, self.tokens, self.positions = (self.samples + samples, self.tokens + tokens,
                                                             self.positions + positions)
            else:  # torch.compile's compile time lands here: reported apart from step time
                self.warmup_s.append(elapsed)
        self.pending = []
        return seconds

    def summary(self) -> dict:
        self.flush()
        total = sum(self.step_s)
        return {
            "timed_steps": len(self.step_s),
            "warmup_steps_excluded": min(self.warmup_steps, self.steps_seen),
            "warmup_s": sum(self.warmup_s),
            "step_ms": {k: v and v * 1e3 for k, v in percentiles(self.step_s).items()},
            "optimizer_step_ms": {k: v and v * 1e3 for k, v in percentiles(self.optimizer_s).items()},
            "optimizer_fraction_of_step": sum(self.optimizer_s) / total if total else None,
            "samples_per_s": self.samples / total if total else None,
            "tokens_per_s": self.tokens / total if total else None,
            "padding_share": padding_share(self.tokens, self.positions),
            # CPU-clock throughput: with one intra-op thread, immune to other processes taking the cores
            "samples_per_cpu_s": self.samples / sum(self.step_cpu_s) if sum(self.step_cpu_s) else None,
        }


def padding_share(real_tokens: int, positions: int) -> float | None:
    """Share of the token positions a model computed on that were padding."""
    return 1 - real_tokens / positions if positions else None


def reset_peak_memory(device: torch.device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def current_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def peak_memory(device: torch.device) -> dict:
    """GPU: the caching allocator's peaks since reset. CPU: the process's peak RSS (a lifetime
    high-water mark, so it includes loading the model and data)."""
    if device.type == "cuda":
        return {"kind": "cuda", "peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}
    return {"kind": "cpu_rss", "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def peak_bytes(memory: dict) -> int:
    """The one peak figure of a `peak_memory` dict: GPU allocated, else CPU RSS."""
    return memory.get("peak_allocated_bytes", memory.get("peak_rss_bytes"))


def storage_tensors(t: torch.Tensor):
    """The tensors that really hold a tensor's bytes: itself, or for a wrapper subclass (torchao's
    quantised states, whose numel/dtype are the *logical* fp32 view) its inner tensors; for an
    FSDP2 DTensor, this rank's shard."""
    if isinstance(t, DTensor):
        yield from storage_tensors(t.to_local())
    elif hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        for n in names:
            yield from storage_tensors(getattr(t, n))
    else:
        yield t


def tensor_storage_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds (see storage_tensors)."""
    return sum(inner.numel() * inner.element_size() for inner in storage_tensors(t))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in optimizer state (moments, momentum buffers, factors, step counters)."""
    return sum(tensor_storage_bytes(t) for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))


def global_throughput(accelerator, timer: StepTimer) -> dict:
    """Samples and tokens summed over ranks, divided by the slowest rank's timed seconds."""
    timer.flush()
    local = torch.tensor([timer.samples, timer.tokens, timer.positions, sum(timer.step_s)], dtype=torch.float64,
                         device=accelerator.device)
    every = accelerator.gather(local[None]).view(-1, 4)
    samples, tokens, positions, _ = every.sum(0).tolist()
    seconds = every[:, 3].max().item()
    return {"processes": accelerator.num_processes,
            "samples_per_s": samples / seconds if seconds else None,
            "tokens_per_s": tokens / seconds if seconds else None,
            "padding_share": padding_share(tokens, positions)}


def per_rank(accelerator, timing: dict, memory: dict) -> list[dict]:
    """Each rank's median step and optimizer-step time and peak memory (gathered: every rank calls it)."""
    local = torch.tensor([timing["step_ms"]["median"] or 0.0, timing["optimizer_step_ms"]["median"] or 0.0,
                          float(peak_bytes(memory))], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(local[None]).view(-1, 3).tolist()
    return [{"rank": r, "step_ms_median": s, "optimizer_step_ms_median": o, "peak_memory_bytes": int(m)}
            for r, (s, o, m) in enumerate(every)]
