"""One race generation's scoring two ways: serially in this process with 2 torch threads (the search's own objective,
prefix reuse on), and on a pool of 2 workers with 1 thread each (``workers.open_pool``: the process backend, and Ray
when it is installed).

The generation is the offline profile's race: 16 children of the uniform parent, raced on fresh
validation samples of 1, 2 and 4 windows of 512 tokens keeping 4, then 2, then 1, and the parent re-scored on the
last sample (``search.Race``). SmolLM2-135M in the dtype ``auto`` chooses (or the one given), magnitude pruning, KL
off. Each setting first scores one child per worker on a sample of its own to warm up (not timed). The values must
be identical across settings. Usage: python bench/workers.py [DTYPE]; the last line is one JSON object (times in
seconds; ratio = serial time / pool time, above 1 when the pool is faster).
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time

import numpy as np
import torch

from evoprune import hardware
from evoprune.data import default_data
from evoprune.search import Race, Settings, fresh_sample
from evoprune.session import Session
from evoprune.workers import open_pool, session_objective

WORKERS = 2
WARM_UP = fresh_sample(99, 0, 0, 1)


def generation(settings: Settings, sizes: list[int]) -> list[list[float]]:
    """A race generation's children of the uniform parent, as the search draws them (seed 0, generation 1)."""
    return Race(settings, sizes).offspring([settings.target] * len(sizes), np.random.default_rng(0))


def race(score, settings: Settings, children: list[list[float]]) -> list[float]:
    """Every value a race generation computes, in order: each stage's survivors, then the parent on the last
    sample. ``score(genomes, sample)`` is a batch scorer (``ModelObjective.map`` or ``Pool.map``)."""
    parent, alive, values = [settings.target] * len(children[0]), children, []
    for stage, windows in enumerate(settings.stage_windows):
        sample = fresh_sample(settings.seed, 1, stage, windows)
        scores = score(alive, sample)
        values += scores
        keep = 1 if stage == settings.stages - 1 else max(1, settings.promote // 2 ** stage)
        alive = [alive[i] for i in np.argsort(scores, kind="stable")[:keep]]
    return values + score([parent], sample)


def serial(settings: Settings, children) -> tuple[list[float], float, float]:
    torch.set_num_threads(WORKERS)
    start = time.perf_counter()
    objective = session_objective(settings)
    objective.map(children[:1], WARM_UP)
    ready = time.perf_counter()
    values = race(objective.map, settings, children)
    return values, time.perf_counter() - ready, ready - start


def pooled(settings: Settings, children, backend: str) -> tuple[list[float], float, float]:
    start = time.perf_counter()
    with open_pool(functools.partial(session_objective, settings), WORKERS, backend, threads_per_worker=1) as pool:
        pool.map(children[:WORKERS], WARM_UP)
        ready = time.perf_counter()
        values = race(pool.map, settings, children)
        return values, time.perf_counter() - ready, ready - start


def main() -> None:
    dtype = hardware.resolve_dtype(sys.argv[1] if len(sys.argv) > 1 else "auto")
    settings = Settings(model="smollm2-135m", data=default_data(), target=0.45, strategy="race", seq_len=512,
                        dtype=dtype)
    sizes = Session(settings.model, settings.data).pruner().gene_sizes()
    children = generation(settings, sizes)
    values, seconds, setup = serial(settings, children)
    figures = {"children": len(children), "stage_windows": settings.stage_windows, "model": "smollm2-135m",
               "dtype": dtype, "seq_len": settings.seq_len, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "cores": os.cpu_count(), "load_average": os.getloadavg()[0], "serial_1x2_s": seconds,
               "serial_setup_s": setup}
    backends = ["process"]
    try:
        import ray  # noqa: F401
        backends.append("ray")
    except ImportError:
        print("ray is not installed: the ray backend is skipped", file=sys.stderr)
    for backend in backends:
        pool_values, pool_s, pool_setup = pooled(settings, children, backend)
        figures |= {f"{backend}_2x1_s": pool_s, f"{backend}_setup_s": pool_setup,
                    f"{backend}_ratio": seconds / pool_s, f"{backend}_identical": pool_values == values}
        print(f"{backend}: {pool_s:.2f} s for a race generation on 2 x 1 thread, {seconds:.2f} s on 1 x 2 threads "
              f"(ratio {seconds / pool_s:.2f}); identical values: {pool_values == values}", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
