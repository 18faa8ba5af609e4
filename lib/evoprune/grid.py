"""Genomes on a level grid: rates restricted to 0, s, 2s, ... (a SparseGPT level database's grid). No torch.

A rate must be a grid level (within ``ON_GRID``) and is refused otherwise. ``snap_to_grid`` rounds a genome to the
grid with its parameter-weighted mean exactly at a target level; ``move_levels`` is EvoPress's level-switch
mutation (one gene a level down, another of the same size a level up), so a search on the grid stays exactly at
its target. A matrix at level k has exactly ``count_for(grid[k], numel)`` pruned weights, so a genome whose weighted
mean is the target reaches the target's block sparsity up to half a weight per matrix.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from evoprune import EvopruneError

GRID = tuple(i / 10 for i in range(10))  # 0.0, 0.1, ..., 0.9
ON_GRID = 1e-6  # a rate this close to a level is that level
MOVE_TRIES = 20


def check_grid(grid: Sequence[float]) -> tuple[float, ...]:
    """A grid must be 0, s, 2s, ... below 1: evenly spaced from 0 (the level steps of the search are s)."""
    grid = tuple(float(g) for g in grid)
    if len(grid) < 2 or grid[-1] >= 1.0 or any(abs(g - i * grid[1]) > 1e-9 for i, g in enumerate(grid)) \
            or grid[1] <= 0:
        raise EvopruneError(f"a level grid must be 0, s, 2s, ... with every level below 1 (e.g. {list(GRID)}); "
                            f"got {list(grid)}.")
    return grid


def level_of(rate: float, grid: Sequence[float]) -> int:
    """The index of the grid level ``rate`` is on; a rate between levels is refused."""
    k = int(math.floor(rate / grid[1] + 0.5))
    if not 0 <= k < len(grid) or abs(rate - grid[k]) > ON_GRID:
        raise EvopruneError(f"rate {rate} is not a level of the sparsegpt database (levels {list(grid)}): round the "
                            f"genome with evoprune.grid.snap_to_grid, or build a database with a finer grid.")
    return k


def _best_move(k: list[int], wanted: list[float], sizes: list[int], deficit: int, top: int):
    """The single level step, or else the pair of opposite steps, that brings the weighted level sum closest to
    the goal (ties: towards the wanted rates); None if none brings it closer."""
    s = 1 if deficit > 0 else -1
    free = [i for i in range(len(k)) if 0 <= k[i] + s <= top]
    after = lambda move: abs(deficit - sum(d * sizes[i] for i, d in move))  # noqa: E731
    cost = lambda move: (after(move), sum(d * (k[i] - wanted[i]) for i, d in move))  # noqa: E731
    for candidates in ([((i, s),) for i in free],
                       [((i, s), (j, -s)) for i in free for j in range(len(k))
                        if sizes[j] != sizes[i] and 0 <= k[j] - s <= top]):
        best = min(candidates, key=cost, default=None)
        if best is not None and after(best) < abs(deficit):
            return best
    return None


def snap_to_grid(genome: Sequence[float], sizes: Sequence[int], target: float,
                 grid: Sequence[float] = GRID) -> list[float]:
    """Round a genome to grid levels with its parameter-weighted mean exactly ``target`` (itself a level): each
    rate to its nearest level, then single level steps (or pairs of opposite steps, for unequal gene sizes) that
    shrink the gap to the target, preferring genes rounded furthest the other way. Sum w k is kept in integers."""
    grid = check_grid(grid)
    goal, top = level_of(target, grid), len(grid) - 1
    wanted = [min(max(float(g) / grid[1], 0.0), float(top)) for g in genome]
    k = [int(math.floor(x + 0.5)) for x in wanted]
    sizes = [int(s) for s in sizes]
    deficit = goal * sum(sizes) - sum(s * x for s, x in zip(sizes, k))
    while deficit:
        move = _best_move(k, wanted, sizes, deficit, top)
        if move is None:
            raise EvopruneError(f"no genome on the grid {list(grid)} has weighted mean exactly {target} near this "
                                "one: start from the uniform genome.")
        for i, d in move:
            k[i] += d
            deficit -= d * sizes[i]
    return [grid[x] for x in k]


def move_levels(genome: Sequence[float], sizes: Sequence[int], rng: np.random.Generator, n_moves: int,
                grid: Sequence[float] = GRID) -> list[float]:
    """EvoPress's level-switch mutation: ``n_moves`` times, one gene one level down and another of the same size
    one level up, so the weighted mean stays exactly where it was. Genes with no partner of their size stay."""
    grid = check_grid(grid)
    k, top = [level_of(g, grid) for g in genome], len(grid) - 1
    for _ in range(n_moves):
        for _ in range(MOVE_TRIES):
            giver, taker = rng.choice(len(k), size=2, replace=False)
            if sizes[giver] == sizes[taker] and k[giver] > 0 and k[taker] < top:
                k[giver] -= 1
                k[taker] += 1
                break
    return [grid[x] for x in k]
