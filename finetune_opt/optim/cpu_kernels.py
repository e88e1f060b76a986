"""C++ kernels shipped as source (optim/kernels/*.cpp) and built on first use, on the machine that
runs them, by torch's extension builder (a C++ compiler and ninja, as Inductor's CPU backend also
needs a compiler). A build is cached under torch's extensions directory (TORCH_EXTENSIONS_DIR) and
named by the source, the flags, the CPU and torch's version, so a home directory shared between
machines never loads a binary built for another instruction set or another torch. A kernel that
cannot be built is refused in one line naming the implementations that need no build: never a
silent fallback to a slower step."""

import functools
import hashlib
import os
import platform
import shutil
import threading
from pathlib import Path

import torch

from finetune_opt.errors import ConfigError

SOURCES = Path(__file__).parent / "kernels"
FLAGS = ("-O3", "-march=native")  # built where it runs: the CPU's own vector width


def _cpu() -> str:
    try:
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    except OSError:
        names = []
    return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} {names[0] if names else platform.processor()}"


def check_tools(what: str, refusal: str) -> None:
    """Before anything is loaded: the compiler and ninja that a build needs are on the PATH (the
    compiler is $CXX, else c++, as torch's extension builder picks it; its first word, for a
    launcher such as "ccache g++")."""
    compiler = (os.environ.get("CXX") or "c++").split()[0]
    missing = [tool for tool in (compiler, "ninja") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"{what} builds a C++ kernel on first use and needs {' and '.join(missing)} "
                          f"on the PATH: {refusal}")


# One build and load at a time in a process: functools.cache lets concurrent first calls through
# (optimizers built on several threads); cpp_extension's own file lock covers other processes.
_BUILDING = threading.Lock()


@functools.cache
def load_kernel(name: str, refusal: str) -> None:
    """Build (once per machine and source) and load kernels/<name>.cpp, which registers its ops
    under torch.ops; `refusal` ends the one-line error if it cannot be built."""
    with _BUILDING:
        _build_and_load(name, refusal)


def _build_and_load(name: str, refusal: str) -> None:
    source = SOURCES / f"{name}.cpp"
    # torch's builder reuses a build of the same name with unchanged sources and flags, even one
    # compiled against another torch: its version is part of the name
    built_for = f"{' '.join(FLAGS)} {_cpu()} torch {torch.__version__}"
    key = hashlib.sha256(source.read_bytes() + built_for.encode()).hexdigest()[:16]
    from torch.utils import cpp_extension  # imports setuptools: only when a kernel is needed
    try:
        cpp_extension.load(f"finetune_opt_{name}_{key}", [str(source)], extra_cflags=list(FLAGS),
                           is_python_module=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - a compiler, ninja or linker failure: each its own type
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"could not build the C++ kernel {source.name} ({first}): {refusal}") from None
