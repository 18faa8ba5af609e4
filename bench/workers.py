"""One race generation's scoring two ways: serially in this process with 2 torch threads (the search's own objective,
prefix reuse on), and on a pool of 2 workers with 1 thread each (``workers.open_pool``: the process backend, and Ray
when it is installed).

The generation is the offline profile's race: 16 children of the uniform parent, raced on fresh
validation samples of 1, 2 and 4 windows of 512 tokens keeping 4, then 2, then 1, and the parent re-scored on the
last sample (``search.Race``'s generation 1). SmolLM2-135M in the dtype ``auto`` chooses (or the one given),
magnitude pruning, KL off. Generation 0 (the parent alone) warms each setting up and is not timed. The values must
be identical across settings. Usage: python bench/workers.py [DTYPE]; the last line is one JSON object (times in
seconds; ratio = serial time / pool time, above 1 when the pool is faster).
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
from evoprune.objective import FitnessSpec, split_settings
from evoprune.search import Search, Settings
from evoprune.session import Session
from evoprune.workers import open_pool, session_objective

WORKERS = 2


def race_generation(score, settings: Settings, spec: FitnessSpec, sizes: list[int]) -> tuple[dict, float]:
    """Generation 0 (the uniform parent on the last stage's sample: a warm-up) and then, timed, generation 1 of a
    ``search.Race`` scored by ``score`` (the objective itself or a pool): every value it computed, and its time."""
    search = Search(score, sizes, settings, tokens_per_window=spec.seq_len)
    search.step()
    start = time.perf_counter()
    search.step()
    return search.evaluator.cache, time.perf_counter() - start


def serial(settings: Settings, spec: FitnessSpec, sizes) -> tuple[dict, float, float]:
    torch.set_num_threads(WORKERS)
    start = time.perf_counter()
    objective = session_objective(spec)
    setup = time.perf_counter() - start
    return (*race_generation(objective, settings, spec, sizes), setup)


def pooled(settings: Settings, spec: FitnessSpec, sizes, backend: str) -> tuple[dict, float, float]:
    start = time.perf_counter()
    with open_pool(functools.partial(session_objective, spec), WORKERS, backend, threads_per_worker=1) as pool:
        setup = time.perf_counter() - start
        return (*race_generation(pool, settings, spec, sizes), setup)


def main() -> None:
    dtype = hardware.resolve_dtype(sys.argv[1] if len(sys.argv) > 1 else "auto")
    settings, spec = split_settings(dict(model="smollm2-135m", data=default_data(), target=0.45, strategy="race",
                                         seq_len=512, dtype=dtype))
    sizes = Session(spec.model, spec.data).pruner().gene_sizes()
    values, seconds, setup = serial(settings, spec, sizes)
    figures = {"children": settings.offspring, "stage_windows": settings.stage_windows, "model": "smollm2-135m",
               "dtype": dtype, "seq_len": spec.seq_len, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "cores": os.cpu_count(), "load_average": os.getloadavg()[0], "serial_1x2_s": seconds,
               "serial_setup_s": setup}
    backends = ["process"]
    try:
        import ray  # noqa: F401
        backends.append("ray")
    except ImportError:
        print("ray is not installed: the ray backend is skipped", file=sys.stderr)
    for backend in backends:
        pool_values, pool_s, pool_setup = pooled(settings, spec, sizes, backend)
        figures |= {f"{backend}_2x1_s": pool_s, f"{backend}_setup_s": pool_setup,
                    f"{backend}_ratio": seconds / pool_s, f"{backend}_identical": pool_values == values}
        print(f"{backend}: {pool_s:.2f} s for a race generation on 2 x 1 thread, {seconds:.2f} s on 1 x 2 threads "
              f"(ratio {seconds / pool_s:.2f}); identical values: {pool_values == values}", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
