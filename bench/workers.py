"""One generation's children scored three ways: serially in this process with 2 torch threads, and on a pool of
2 workers with 1 thread each (``workers.open_pool``: the process backend, and Ray when it is installed).
The objective is the search's (``workers.session_objective``): SmolLM2-135M in the dtype ``auto`` chooses (or
the one given), magnitude pruning, primary perplexity of the first 1024-token validation window.

Each setting first scores one child per worker to warm up (not timed); then the same CHILDREN children are timed.
The values must be identical across settings. Usage: python bench/workers.py [CHILDREN [DTYPE]]; the last line is one
JSON object (times in seconds; ratio = serial time / pool time, above 1 when the pool is faster).
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time

import torch

from evoprune import hardware
from evoprune.data import default_data
from evoprune.search import Settings
from evoprune.workers import open_pool, session_objective

WORKERS = 2


def children(n: int, n_genes: int = 30) -> list[list[float]]:
    gen = torch.Generator().manual_seed(0)
    return [(0.3 + 0.3 * torch.rand(n_genes, generator=gen)).tolist() for _ in range(n)]


def serial(make, genomes) -> tuple[list[float], float, float]:
    torch.set_num_threads(WORKERS)
    start = time.perf_counter()
    objective = make()
    objective(genomes[0], 1)  # warm-up
    ready = time.perf_counter()
    values = [objective(g, 1) for g in genomes]
    return values, time.perf_counter() - ready, ready - start


def pooled(make, genomes, backend: str) -> tuple[list[float], float, float]:
    start = time.perf_counter()
    with open_pool(make, WORKERS, backend, threads_per_worker=1) as pool:
        pool.map(genomes[:WORKERS], 1)  # warm-up: one child per worker
        ready = time.perf_counter()
        values = pool.map(genomes, 1)
        return values, time.perf_counter() - ready, ready - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    dtype = hardware.resolve_dtype(sys.argv[2] if len(sys.argv) > 2 else "auto")
    settings = Settings(model="smollm2-135m", data=default_data(), target=0.45, fitness_windows=1, dtype=dtype)
    make = functools.partial(session_objective, settings)
    genomes = children(n)
    values, seconds, setup = serial(make, genomes)
    figures = {"children": n, "model": "smollm2-135m", "dtype": dtype, "windows": 1, "seq_len": 1024,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
               "load_average": os.getloadavg()[0], "serial_1x2_s": seconds, "serial_setup_s": setup}
    backends = ["process"]
    try:
        import ray  # noqa: F401
        backends.append("ray")
    except ImportError:
        print("ray is not installed: the ray backend is skipped", file=sys.stderr)
    for backend in backends:
        pool_values, pool_s, pool_setup = pooled(make, genomes, backend)
        figures |= {f"{backend}_2x1_s": pool_s, f"{backend}_setup_s": pool_setup,
                    f"{backend}_ratio": seconds / pool_s, f"{backend}_identical": pool_values == values}
        print(f"{backend}: {pool_s:.2f} s for {n} children on 2 x 1 thread, {seconds:.2f} s on 1 x 2 threads "
              f"(ratio {seconds / pool_s:.2f}); identical values: {pool_values == values}", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
