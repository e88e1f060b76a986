"""Which precision to train in: `mixed_precision=auto` means bf16 autocast where the device computes
bf16 natively (CUDA GPUs from Ampere on; CPUs with AVX512-BF16 or AMX-BF16, or Arm's BF16
extension), fp32 elsewhere, where emulated bf16 would be slower than fp32. Unset (null, the default)
means bf16 on such a GPU and fp32 on every CPU: bf16 on a CPU is asked for (`auto` or `bf16`)."""

import torch

# /proc/cpuinfo flags of native bf16 arithmetic: x86 AVX512-BF16 / AMX-BF16, Arm's BF16 extension.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16_flags() -> list[str]:
    """The native-bf16 flags this CPU has (what results.json reports)."""
    return [f for f in CPU_BF16_FLAGS if f in cpu_flags()]


def resolve_mixed_precision(value: str | None) -> str:
    """'auto' / None -> 'bf16' or 'no' for the device this process trains on; other values unchanged."""
    if value not in ("auto", None):
        return value
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if value == "auto" and native_bf16_flags() else "no"

