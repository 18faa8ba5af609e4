"""What SparseGPT's level database costs (issue 37, item 1), as ratios of times measured in this run: the build of
the database into a fresh temporary root over one dense float32 forward of the same calibration windows, its size
on disk, applying a new genome of grid levels (``LevelPruner.apply``) over one fitness evaluation as the race
scores it (apply, then primary perplexity on 4 x 1024 validation tokens in the dtype ``auto`` chose), and the peak
resident memory of a short sparsegpt race search in a child process (reading the cached database, as a search
does). Prints a table, then one JSON object (the last line, read by bench/run.py)."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time

import numpy as np
import torch

from evoprune import hardware, levels, perplexity
from evoprune.grid import snap_to_grid
from evoprune.strategies import Race
from evoprune.objective import build_objective, split_settings
from evoprune.session import Session
from run import N_WINDOWS, SEQ_LEN, best_of, search_peak_rss_gib

TARGET = 0.5  # a level of the grid: a sparsegpt search's target must be one
N_GENOMES = 6


def build_figures(session: Session) -> dict:
    """The database build (into a temporary root, so nothing cached is reused) against the best of two dense
    float32 forwards (logits included) of its calibration windows, batched as the build's own forward is;
    ``database_cached``: whether the search read a database of the same identity from the cache."""
    session.restore()
    calibration = session.calibration("sparsegpt")
    forward_s = best_of(lambda: perplexity.primary(session.model, calibration, 4, torch.float32), 2)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        db = levels.build(session.model, calibration, root=root, progress=False)
        build_s = time.perf_counter() - start
        size = db.nbytes()
        cached = (levels.LEVELS_DIR / db.path.name / "identity.json").is_file()
    return {"calibration": list(calibration.shape), "dense_forward_s": forward_s, "build_s": build_s,
            "build_over_forward": build_s / forward_s, "database_gib": size / 2 ** 30,
            "database_levels": len(db.grid) - 1, "database_cached": cached}


def level_genomes(grid, n_genes: int, count: int, seed: int = 0) -> list[list[float]]:
    """``count`` genomes of grid levels between 0.3 and 0.6, each differing from the one before in every gene (so
    every matrix is copied and no block's output can be reused)."""
    choices = [k for k, rate in enumerate(grid) if 0.3 - 1e-9 <= rate <= 0.6 + 1e-9]
    gen = torch.Generator().manual_seed(seed)
    genomes, last = [], [None] * n_genes
    for _ in range(count):
        picks = []
        for gene in range(n_genes):
            options = [k for k in choices if k != last[gene]]
            picks.append(options[int(torch.randint(len(options), (1,), generator=gen))])
        genomes.append([grid[k] for k in picks])
        last = picks
    return genomes


def race_step_apply_s(settings, pruner) -> float:
    """Mean seconds of ``LevelPruner.apply`` over one race generation's children, applied one after another as
    the race scores them (each from its sibling's state: only the matrices whose level differs are copied)."""
    race = Race(settings, pruner.gene_sizes(), grid=pruner.grid)
    parent = snap_to_grid([TARGET] * pruner.n_genes, pruner.gene_sizes(), TARGET, pruner.grid)
    children = race.offspring(parent, np.random.default_rng(0))
    pruner.apply(parent)
    start = time.perf_counter()
    for child in children:
        pruner.apply(child)
    return (time.perf_counter() - start) / len(children)


def apply_figures(session: Session, dtype: str) -> dict:
    """Seconds of ``LevelPruner.apply`` of a new genome (every gene at another level: mean over 5 after a first
    one), of a race child after its sibling (the apply a race pays), and of one fitness evaluation as the race's
    objective does it (apply, then score; the fastest of 3 after a warm-up)."""
    settings, spec = split_settings({"model": session.name, "strategy": "race", "target": TARGET,
                                     "criterion": "sparsegpt", "dtype": dtype, "seq_len": SEQ_LEN})
    objective = build_objective(session, spec)
    pruner = objective.pruner
    genomes = level_genomes(pruner.grid, pruner.n_genes, N_GENOMES)
    pruner.apply(genomes[0])
    start = time.perf_counter()
    for genome in genomes[1:]:
        pruner.apply(genome)
    apply_s = (time.perf_counter() - start) / (len(genomes) - 1)
    step_s = race_step_apply_s(settings, pruner)
    alternate = itertools.cycle(genomes)
    eval_s = best_of(lambda: objective(next(alternate), N_WINDOWS))
    session.restore()
    return {"apply_s": apply_s, "eval_s": eval_s, "apply_over_eval": apply_s / eval_s,
            "race_child_apply_s": step_s, "race_child_apply_over_eval": step_s / eval_s,
            "eval_tokens": N_WINDOWS * SEQ_LEN}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("EVOPRUNE_DATA_DIR"))
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m (the bench) or tiny-gpt2 (a check)")
    args = parser.parse_args()
    chosen = hardware.resolve_dtype("auto")
    extra = ["--seq-len", "128"] if args.model == "tiny-gpt2" else []
    figures = {"model": args.model, "criterion": "sparsegpt", "dtype": chosen,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
               "search_peak_rss_gib": search_peak_rss_gib(args.data, "--criterion", "sparsegpt", *extra,
                                                          model=args.model, target=TARGET)}
    session = Session(args.model, args.data)
    figures.update(build_figures(session))
    figures.update(apply_figures(session, chosen))
    n, seq_len = figures["calibration"]
    print(f"{args.model} sparsegpt level database ({figures['database_levels']} levels), calibration {n}x{seq_len} "
          f"validation tokens, {figures['threads']} threads, CPU capability {figures['cpu_capability']}")
    print(f"  build {figures['build_s']:.1f} s / dense float32 forward {figures['dense_forward_s']:.2f} s = "
          f"{figures['build_over_forward']:.1f}")
    print(f"  database on disk: {figures['database_gib']:.2f} GiB")
    print(f"  apply of a race child after its sibling {figures['race_child_apply_s'] * 1e3:.1f} ms / fitness evaluation "
          f"({chosen}, {N_WINDOWS}x{SEQ_LEN}) {figures['eval_s']:.2f} s = {figures['race_child_apply_over_eval']:.4f} "
          "(target <= 0.05)")
    print(f"  apply of a genome with every gene moved {figures['apply_s'] * 1e3:.1f} ms / the same evaluation = "
          f"{figures['apply_over_eval']:.3f} (the worst case, no target)")
    print(f"  sparsegpt race search peak RSS: {figures['search_peak_rss_gib']:.2f} GiB (target <= 6)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
