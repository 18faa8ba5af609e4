"""Whole-block removal as a search: the DEAP layer-removal GA over sets of exactly k removed blocks, on any
objective ``f(removed blocks) -> float`` (no torch, no model)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from evoprune import EvopruneError
from evoprune.strategies import tournament

def repair(genes: list[int], n_blocks: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Replace repeated blocks by random unused ones, so exactly len(genes) distinct blocks are removed."""
    seen, fixed = set(), []
    for g in genes:
        if g in seen:
            g = int(rng.choice(sorted(set(range(n_blocks)) - seen - set(genes))))
        seen.add(g)
        fixed.append(int(g))
    return tuple(sorted(fixed))


def removal_search(objective: Callable[[tuple[int, ...]], float], n_blocks: int, k: int, population: int = 16,
                   generations: int = 20, seed: int = 0, crossover_prob: float = 0.5, mutation_prob: float = 0.2,
                   gene_prob: float | None = None, tournament_size: int = 3) -> dict:
    """The DEAP layer-removal GA: tournament selection, one-point crossover, uniform-integer mutation, each
    individual a set of exactly ``k`` blocks to remove. The best individual ever seen is kept (elitism of one),
    and no set is evaluated twice."""
    if not 0 < k < n_blocks:
        raise EvopruneError(f"k = {k} blocks to remove: it must be between 1 and {n_blocks - 1} (the depth minus one).")
    if population < 2 or generations < 1:
        raise EvopruneError("the removal GA needs a population of at least 2 and at least 1 generation.")
    rng = np.random.default_rng(seed)
    gene_prob = 1.0 / k if gene_prob is None else gene_prob
    cache: dict[tuple[int, ...], float] = {}

    def fitness(ind: tuple[int, ...]) -> float:
        if ind not in cache:
            cache[ind] = float(objective(ind))
        return cache[ind]

    pop = [tuple(sorted(int(b) for b in rng.choice(n_blocks, size=k, replace=False))) for _ in range(population)]
    history = []
    for generation in range(generations):
        scores = [fitness(ind) for ind in pop]
        best = min(range(len(pop)), key=lambda i: (scores[i], pop[i]))
        history.append({"generation": generation, "best": scores[best], "mean": float(np.mean(scores)),
                        "evaluations": len(cache)})
        if generation == generations - 1:
            break
        parents = [list(pop[tournament(scores, rng, tournament_size)]) for _ in range(population)]
        for a, b in zip(parents[::2], parents[1::2]):
            if k > 1 and rng.random() < crossover_prob:
                point = int(rng.integers(1, k))
                a[point:], b[point:] = b[point:], a[point:]
        for child in parents:
            if rng.random() < mutation_prob:
                for i in range(k):
                    if rng.random() < gene_prob:
                        child[i] = int(rng.integers(n_blocks))
        pop = [pop[best]] + [repair(child, n_blocks, rng) for child in parents[:-1]]
    best_ind = min(cache, key=lambda ind: (cache[ind], ind))
    return {"removed": list(best_ind), "fitness": cache[best_ind], "evaluations": len(cache), "history": history}
