"""The search strategies and their operators: what one generation of each does. No torch, no model.

* ``published`` replays the published GA: random genes in U(0.40, 0.60); each generation keeps the best half
  (at least 2) and refills with copies of random elites with one gene moved by U(-0.1, 0.1), clipped to
  [0, 0.9]; 9999 when the mean rate falls below ``target - tolerance``; every individual, elites included, is
  re-scored each generation.
* ``elitist`` searches only genomes at exactly the target parameter-weighted sparsity (rate-moving mutations,
  projection after crossover), caches fitness, screens children on fewer windows, and keeps the best of parents
  and children ((mu + lambda) elitism).
* ``race`` (EvoPress-style (1 + lambda)) starts from the best of uniform and the rule allocations, races each
  generation's children through stages of fresh samples, and adapts the rate its moves shift to how often a
  generation's best child beats the parent (``Race``). On an objective whose genes are levels of a grid (a
  SparseGPT level database, ``grid``), its starts are snapped to the grid and its moves are level switches.

A strategy gets the search's ``Settings`` and the gene sizes; ``initial(search)`` and ``next_generation(search)``
return (population, fitness), scoring through ``search.evaluator`` and ``search.score_all``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from evoprune.grid import move_levels, snap_to_grid

if TYPE_CHECKING:
    from evoprune.search import Search, Settings

PENALTY = 9999.0
PUBLISHED_G_MAX = 0.9
PUBLISHED_INIT = (0.40, 0.60)
PUBLISHED_MUTATION = 0.1
INIT_MOVES_PER_GENE = 4  # random rate moves that spread an initial individual away from uniform
UNIQUE_TRIES = 20        # attempts at a child that is not already in the population
MOVE_TRIES = 50          # attempts at a gene pair that can give and take one step
EPS = 1e-12
STEP_GROWTH = 1.5  # race: the step grows by this after a generation whose child beat the parent and shrinks by its
                   # fourth root after one whose did not (the 1/5 success rule: a step holds where one generation in
                   # five succeeds), within STEP_RANGE times the configured step
STEP_RANGE = (0.25, 4.0)
KEY_DECIMALS = 9

# --- genomes and operators -----------------------------------------------------------------------------------

def genome_key(genome) -> tuple[float, ...]:
    """Cache key: rounding merges genomes that differ only by floating-point noise (0.45 vs 0.4500000000001)."""
    return tuple(round(float(g), KEY_DECIMALS) for g in genome)


def weighted_mean(genome, sizes) -> float:
    """The parameter-weighted mean rate: the block sparsity a genome gives."""
    w = np.asarray(sizes, dtype=float)
    return float(np.dot(np.asarray(genome, dtype=float), w) / w.sum())


def project(genome, sizes, target: float, g_max: float) -> np.ndarray:
    """Map a genome onto {sum w g = target * sum w, 0 <= g <= g_max} as clip(g + lam, 0, g_max), lam by bisection.
    A genome already on the constraint is returned unchanged, so lattice points stay on the lattice."""
    x = np.asarray(genome, dtype=float)
    w = np.asarray(sizes, dtype=float)
    if abs(weighted_mean(x, w) - target) < EPS and x.min() >= 0.0 and x.max() <= g_max:
        return x.copy()
    goal = target * w.sum()
    lo, hi = -x.max(), g_max - x.min()  # all genes at 0, all at g_max
    for _ in range(100):  # interval width is at most 2: 100 halvings reach the resolution of a double
        mid = 0.5 * (lo + hi)
        if np.dot(w, np.clip(x + mid, 0.0, g_max)) < goal:
            lo = mid
        else:
            hi = mid
    return np.clip(x + hi, 0.0, g_max)


def move_rates(genome, sizes, rng: np.random.Generator, step: float, n_moves: int, g_max: float) -> np.ndarray:
    """EvoPress-style mutation: ``n_moves`` transfers of pruned weights from one gene to another. The smaller gene
    of a pair moves by exactly ``step`` and the larger by step * (smaller / larger), keeping sum w g fixed."""
    g = np.array(genome, dtype=float)
    w = np.asarray(sizes, dtype=float)
    if len(g) < 2:
        return g
    for _ in range(n_moves):
        for _ in range(MOVE_TRIES):
            giver, taker = rng.choice(len(g), size=2, replace=False)
            shared = step * min(w[giver], w[taker])
            down, up = shared / w[giver], shared / w[taker]
            if g[giver] - down >= -EPS and g[taker] + up <= g_max + EPS:
                g[giver] = max(g[giver] - down, 0.0)
                g[taker] = min(g[taker] + up, g_max)
                break
    return g


def tournament(fitness: Sequence[float], rng: np.random.Generator, size: int) -> int:
    picks = rng.integers(len(fitness), size=size)
    return int(min(picks, key=lambda i: (fitness[i], i)))


def cross(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    if kind == "uniform":
        return np.where(rng.random(len(a)) < 0.5, a, b)
    alpha = rng.random(len(a))  # blend: a random point between the parents, gene by gene
    return alpha * a + (1.0 - alpha) * b


# --- the strategies ------------------------------------------------------------------------------------------

class Published:
    """The published GA's generation step: the best half (at least 2) kept unchanged, then copies of random elites
    with one random gene moved by U(-0.1, 0.1) and clipped to [0, 0.9]. No crossover, no cache."""
    cache = False

    def __init__(self, settings: Settings, sizes: Sequence[int]):
        self.settings, self.sizes = settings, sizes

    def initial(self, search: "Search") -> tuple[list, list]:
        population = search.rng.uniform(*PUBLISHED_INIT, size=(self.settings.population, len(self.sizes))).tolist()
        return population, search.score_all(population)

    def next_generation(self, search: "Search") -> tuple[list, list]:
        population = published_offspring(search.population, search.fitness, search.rng)
        return population, search.score_all(population)

    def penalized(self, genome) -> bool:
        s = self.settings
        return weighted_mean(genome, self.sizes) < s.target - s.tolerance


def published_offspring(population, fitness, rng: np.random.Generator) -> list[list[float]]:
    n_elite = max(2, len(population) // 2)
    elites = [list(population[i]) for i in np.argsort(fitness, kind="stable")[:n_elite]]
    children = []
    for _ in range(len(population) - n_elite):
        child = list(elites[rng.integers(n_elite)])
        gene = rng.integers(len(child))
        child[gene] = float(np.clip(child[gene] + rng.uniform(-PUBLISHED_MUTATION, PUBLISHED_MUTATION), 0.0,
                                    PUBLISHED_G_MAX))
        children.append(child)
    return elites + children


class Elitist:
    """Exact-target (mu + lambda) search: tournament parents, crossover then projection, rate-moving mutation;
    children screened on ``low_windows``, the best ``promote`` re-scored on all windows compete with the parents,
    and the best ``population`` of both survive."""
    cache = True

    def __init__(self, settings: Settings, sizes: Sequence[int]):
        self.settings, self.sizes = settings, sizes

    def initial(self, search: "Search") -> tuple[list, list]:
        population = self.initial_population(search.rng)
        return population, search.score_all(population)

    def initial_population(self, rng: np.random.Generator) -> list[list[float]]:
        """The uniform vector plus random walks away from it, all at exactly the target."""
        s = self.settings
        uniform = np.full(len(self.sizes), s.target)
        population, seen = [uniform.tolist()], {genome_key(uniform)}
        for _ in range(s.population * UNIQUE_TRIES):
            if len(population) == s.population:
                break
            walk = move_rates(uniform, self.sizes, rng, s.step, INIT_MOVES_PER_GENE * len(self.sizes), s.g_max)
            genome = project(walk, self.sizes, s.target, s.g_max)
            if genome_key(genome) not in seen:
                seen.add(genome_key(genome))
                population.append(genome.tolist())
        return population

    def child(self, population, fitness, rng: np.random.Generator) -> np.ndarray:
        s = self.settings
        child = np.asarray(population[tournament(fitness, rng, s.tournament)], dtype=float)
        if s.crossover != "none":
            other = np.asarray(population[tournament(fitness, rng, s.tournament)], dtype=float)
            child = project(cross(child, other, rng, s.crossover), self.sizes, s.target, s.g_max)
        moves = int(rng.integers(1, s.max_moves + 1))
        return project(move_rates(child, self.sizes, rng, s.step, moves, s.g_max), self.sizes, s.target, s.g_max)

    def offspring(self, population, fitness, rng: np.random.Generator) -> list[list[float]]:
        """Up to ``offspring`` children, none equal to a parent or to each other."""
        seen = {genome_key(p) for p in population}
        children = []
        for _ in range(self.settings.offspring):
            for _ in range(UNIQUE_TRIES):
                child = self.child(population, fitness, rng)
                if genome_key(child) not in seen:
                    seen.add(genome_key(child))
                    children.append(child.tolist())
                    break
        return children

    def next_generation(self, search: "Search") -> tuple[list, list]:
        s = self.settings
        children = self.offspring(search.population, search.fitness, search.rng)
        if s.low_windows < s.fitness_windows:
            low = search.evaluator.many(children, s.low_windows)
            children = [children[i] for i in np.argsort(low, kind="stable")[: s.promote]]
        pool = list(zip(search.fitness, search.population)) + list(zip(search.score_all(children), children))
        survivors = sorted(range(len(pool)), key=lambda i: (pool[i][0], i))[: s.population]
        return [pool[i][1] for i in survivors], [pool[i][0] for i in survivors]

    def penalized(self, genome) -> bool:
        return False


def fresh_sample(seed: int, generation: int, stage: int, n_windows: int) -> tuple:
    """A fitness sample the objective draws anew for each (seed, generation, stage): ``(draw, n_windows)``. The
    model objective turns ``draw`` into windows at random places of the whole fitness split."""
    return ((seed, generation, stage), n_windows)


def sample_windows(sample) -> int:
    """Windows of a sample: a number (the first n windows) or a fresh sample ``(draw, n)``."""
    return sample if isinstance(sample, int) else sample[1]


class Race:
    """EvoPress-style (1 + lambda): generation 0 scores the initial genomes (uniform and the rule allocations the
    caller gives) and keeps the best as the parent. Each later generation makes ``offspring`` distinct children
    of 1..``max_moves`` rate moves from the parent and races them through ``stages`` fresh samples of
    ``low_windows`` x 2^stage windows, keeping ``promote`` (halved after each later stage, at least 1); the last
    stage's best meets the parent re-scored on that same sample (a paired comparison) and replaces it if better.
    No sample is seen twice, so no fixed windows can be overfit. The rate a move shifts adapts to how often
    generations succeed (``adapt_step``)."""
    cache = True

    def __init__(self, settings: Settings, sizes: Sequence[int], rules=None, grid: Sequence[float] | None = None):
        """``rules``: named genomes to start from besides uniform, or a function giving them, called only when
        generation 0 runs (a resumed search does not compute its start again)."""
        self.settings, self.sizes, self.grid, self.given_rules = settings, sizes, grid, rules
        self.start: dict[str, float] = {}  # each rule's fitness on generation 0's sample
        self.step = settings.step  # of the next generation's moves

    def initial(self, search: "Search") -> tuple[list, list]:
        """Every rule allocation, projected onto the exact target, scored on one sample of the last stage's size;
        the best becomes the parent."""
        s = self.settings
        given = self.given_rules() if callable(self.given_rules) else self.given_rules
        rules = {"uniform": [s.target] * len(self.sizes), **(given or {})}
        names = list(rules)
        candidates = [self.onto_target(rules[name]) for name in names]
        scores = search.evaluator.many(candidates, fresh_sample(s.seed, 0, s.stages - 1, s.stage_windows[-1]))
        self.start = dict(zip(names, scores))
        best = int(np.argmin(scores))
        search.note_best(scores[best], search.evaluator.stamps.get(best))
        return [candidates[best]], [scores[best]]

    def offspring(self, parent, rng: np.random.Generator, draw_moves=None) -> list[list[float]]:
        """Distinct children of 1..``max_moves`` moves (uniform; ``draw_moves(rng)``: another count, for benches)."""
        s = self.settings
        seen, children = {genome_key(parent)}, []
        for _ in range(s.offspring * UNIQUE_TRIES):
            if len(children) == s.offspring:
                break
            moves = int(draw_moves(rng) if draw_moves else rng.integers(1, s.max_moves + 1))
            child = self.mutate(parent, rng, moves)
            if genome_key(child) not in seen:
                seen.add(genome_key(child))
                children.append(child)
        return children

    def onto_target(self, genome) -> list[float]:
        """A rule's genome at exactly the target: projected, or on a level grid snapped to its levels."""
        s = self.settings
        if self.grid is not None:
            return snap_to_grid(genome, self.sizes, s.target, self.grid)
        return project(genome, self.sizes, s.target, s.g_max).tolist()

    def mutate(self, parent, rng: np.random.Generator, moves: int) -> list[float]:
        """``moves`` rate moves at the current step, or on a level grid ``moves`` level switches."""
        s = self.settings
        if self.grid is not None:
            return move_levels(parent, self.sizes, rng, moves, self.grid)
        return project(move_rates(parent, self.sizes, rng, self.step, moves, s.g_max), self.sizes, s.target,
                       s.g_max).tolist()

    def next_generation(self, search: "Search") -> tuple[list, list]:
        s = self.settings
        parent = search.population[0]
        alive = self.offspring(parent, search.rng)
        for stage, windows in enumerate(s.stage_windows):
            sample = fresh_sample(s.seed, search.generation, stage, windows)
            scores = search.evaluator.many(alive, sample)
            keep = 1 if stage == s.stages - 1 else max(1, s.promote // 2 ** stage)
            order = np.argsort(scores, kind="stable")[:keep]
            alive, scores = [alive[i] for i in order], [scores[i] for i in order]
        parent_score = search.evaluator.many([parent], sample)[0]
        self.adapt_step(scores[0] < parent_score)
        if scores[0] < parent_score:
            search.note_best(scores[0], None, force=True)
            return alive[:1], scores[:1]
        return [parent], [parent_score]

    def adapt_step(self, success: bool) -> None:
        """Rechenberg's 1/5 success rule: larger moves while children keep beating the parent, smaller ones when
        they stop (near an optimum, or where the samples' noise hides small gains). ``--step-rule fixed``: none."""
        if self.settings.step_rule == "fixed" or self.grid is not None:  # on a grid a move is one level
            return
        low, high = self.settings.step * STEP_RANGE[0], min(self.settings.step * STEP_RANGE[1], self.settings.g_max)
        self.step = float(np.clip(self.step * STEP_GROWTH ** (1.0 if success else -0.25), low, high))

    def penalized(self, genome) -> bool:
        return False



STRATEGY_CLASSES = {"published": Published, "elitist": Elitist, "race": Race}
