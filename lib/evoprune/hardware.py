"""Choosing the fitness dtype from the hardware it runs on, and keeping the C heap from churning.

``resolve_dtype("auto")`` picks bfloat16 only where it is fast: a CUDA device that supports it natively, or a CPU on
which a short matmul probe (``probe_matmul``, well under a second even where bf16 is emulated) runs bfloat16 at least
``BF16_SPEEDUP`` x the float32 GFLOP/s (native bf16 instructions such as AVX512_BF16 or AMX; elsewhere bf16 is
emulated and far slower than float32).
The probe's figures are cached per machine and thread count in ``data/cache/hardware_probe_<threads>t.json``,
keyed by a fingerprint of the CPU, torch build, thread count and GPU; a file written on another machine is probed
again and overwritten.
"""
from __future__ import annotations

import ctypes
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from evoprune import EvopruneError
from evoprune.models import CACHE_DIR
from evoprune.perplexity import DTYPE_CHOICES, DTYPES, get_dtype
from evoprune.provenance import cpu_info
from evoprune.records import write_json

PROBE_SHAPE = (256, 576, 768)  # rows x in x out: a slice of a SmolLM2 MLP matmul, small enough that emulated
                               # bf16 (~2 GFLOP/s on AVX2-only CPUs) still takes well under a second
PROBE_REPEATS = 3                # timed calls per dtype after one warm-up; the best counts
PROBE_BUDGET_S = 0.25            # per dtype: stop repeating once this much time went into timed calls
BF16_SPEEDUP = 1.2               # bfloat16 must beat float32 GFLOP/s by this factor to be chosen

_last: dict | None = None  # the latest decision, for dtype_decision()
_printed: set[str] = set()


def fingerprint() -> dict:
    """What decides the probe's figures: CPU, its flags, torch build and kernels, threads, GPU."""
    name, flags = cpu_info()
    return {"cpu": name, "cpu_flags": flags, "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def probe_matmul(shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = PROBE_REPEATS) -> dict:
    """GFLOP/s of a model-shaped CPU matmul in float32 and in bfloat16 (best of ``repeats`` after a warm-up), on
    torch's current thread count."""
    rows, inner, cols = shape
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, inner, generator=gen), torch.randn(inner, cols, generator=gen)
    start, figures = time.perf_counter(), {}
    for name, dtype in DTYPES.items():
        x, w = a.to(dtype), b.to(dtype)
        t = time.perf_counter()
        torch.mm(x, w)
        best = spent = time.perf_counter() - t  # the warm-up counts only where it alone is slow (emulated bf16)
        if best < PROBE_BUDGET_S / 2:
            best, spent = float("inf"), 0.0
        for _ in range(repeats if best == float("inf") else 0):
            t = time.perf_counter()
            torch.mm(x, w)
            best, spent = min(best, time.perf_counter() - t), spent + time.perf_counter() - t
            if spent > PROBE_BUDGET_S:
                break
        figures[f"{name}_gflops"] = round(2 * rows * inner * cols / best / 1e9, 1)
    return {**figures, "shape": list(shape), "wall_s": round(time.perf_counter() - start, 3)}


def probe_file() -> Path:
    return CACHE_DIR / f"hardware_probe_{torch.get_num_threads()}t.json"


def cached_probe(probe: Callable[[], dict] = probe_matmul, path: Path | None = None) -> dict:
    """The probe's figures for this machine: from ``path`` (``probe_file()``) when it was written under the same
    fingerprint, else measured now and written there."""
    here, path = fingerprint(), Path(path or probe_file())
    try:
        saved = json.loads(Path(path).read_text())
        if saved.get("fingerprint") == here and saved["probe"].get("shape", list(PROBE_SHAPE)) == list(PROBE_SHAPE):
            return saved["probe"]
    except (OSError, ValueError, KeyError, AttributeError):  # none yet, or unreadable: probe again
        pass
    figures = probe()
    write_json(path, {"fingerprint": here, "probe": figures})
    return figures


def resolve_dtype(name: str, probe: Callable[[], dict] | None = None, path: Path | None = None) -> str:
    """The fitness dtype for a requested name: float32 and bfloat16 as they are; ``auto``: bfloat16 on a CUDA
    device that supports it natively or on a CPU where the probe finds it ``BF16_SPEEDUP`` x faster, else float32.
    ``probe`` replaces ``probe_matmul`` (tests). The decision is printed once per process, to stderr."""
    global _last
    if name not in DTYPE_CHOICES:
        raise EvopruneError(f"unknown dtype {name!r}: use one of {', '.join(DTYPE_CHOICES)}.")
    here, figures = fingerprint(), None
    if name != "auto":
        get_dtype(name)
        dtype = name
    elif here["cuda"] is not None:
        # native bf16 only: torch also reports bf16 as supported where it emulates it (pre-Ampere GPUs), slowly
        dtype = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float32"
    else:
        figures = cached_probe(probe or probe_matmul, path)
        fast = figures["bfloat16_gflops"] >= BF16_SPEEDUP * figures["float32_gflops"]
        dtype = "bfloat16" if fast else "float32"
    _last = {"requested": name, "dtype": dtype, "capability": here["capability"], "probe": figures,
             "fingerprint": here}
    if name == "auto":
        line = (f"evoprune: fitness dtype auto -> {dtype} (CPU capability {here['capability']}, "
                f"{here['threads']} threads, cuda {here['cuda']}; probe "
                + (f"float32 {figures['float32_gflops']} GFLOP/s, bfloat16 {figures['bfloat16_gflops']} GFLOP/s)"
                   if figures else "not run)"))
        if line not in _printed:
            _printed.add(line)
            print(line, file=sys.stderr)
    return dtype


def dtype_decision() -> dict:
    """The latest decision for provenance records: requested, dtype, capability, probe figures (None when no
    probe ran) and the machine fingerprint. Resolves ``auto`` if nothing was resolved yet."""
    if _last is None:
        resolve_dtype("auto")
    return dict(_last)


# glibc malloc, by default, hands large blocks back to the kernel as soon as they are freed (an mmap per block, and a
# heap top trimmed past a threshold that grows with the blocks it sees): a forward then page-faults every activation
# it allocates, again and again. Fixed thresholds above a forward's activations (SmolLM2, 4 x 1024 tokens: the
# largest is the 56 MB bf16 LM head) keep freed blocks for reuse. Measured in a process that loads SmolLM2 and
# scores 6 genomes in bf16 (4 x 1024 tokens, 2-core AVX512 EPYC): minor page faults 1.63M -> 0.48M, system time
# 5.9 -> 1.7 s, peak RSS unchanged.
MMAP_THRESHOLD = 128 * 2**20  # M_MMAP_THRESHOLD: blocks below this come from the heap and are reused
TRIM_THRESHOLD = 256 * 2**20  # M_TRIM_THRESHOLD: free memory kept at the heap's top before it is given back
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds (above) for this process; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                     TRIM_THRESHOLD))
