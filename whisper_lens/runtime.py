"""Where and how the model runs: device choice, default dtype, and the CPU allocator.

Caching activations allocates large fresh buffers (a tiny encoder pattern is 54 MB per layer and
item). glibc serves blocks over 32 MB with mmap and returns them to the OS when freed, so every
forward pass page-faults its buffers in again: on the project's 2-core machine that was 0.3-0.5 s
of system time per tiny forward, for openai-whisper and HookedWhisper alike.
`keep_freed_memory()` asks glibc to keep freed memory for reuse instead (process-wide, opt-in;
the CLI's long jobs turn it on), and `return_freed_memory()` gives it back to the OS between
stages, so one stage's buffers do not stay resident through the next.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA, then MPS, then CPU; anything else as given."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU, float16 on a GPU (CUDA or MPS)."""
    return torch.float32 if device.type == "cpu" else torch.float16


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def return_freed_memory() -> bool:
    """Give the heap's free pages back to the OS now (glibc's `malloc_trim(0)`, which also frees
    pages in the middle of the heap). Returns False where there is no glibc."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    return bool(trim(0)) if trim is not None else False


def release_memory(model: Any = None) -> None:
    """Between the stages of a long job: collect garbage, free the model's kept attention
    buffers (`HookedWhisper.release_buffers`) and give the heap's free pages back to the OS, so
    a job peaks at its largest stage, not at the sum of them."""
    import gc

    gc.collect()
    if model is not None:
        model.release_buffers()
    return_freed_memory()


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Serve allocations up to `limit_bytes` from the heap and never trim it (glibc only).

    Returns True when the allocator took the settings, False elsewhere (macOS, musl, Windows)."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, limit_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
