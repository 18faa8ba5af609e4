"""Evolutionary search for per-gene pruning rates: ``python -m evoprune search`` and ``run_search``.

Two modes:
  * ``seed`` replays the published GA: random genes in U(0.40, 0.60); each generation keeps the best half
    (at least 2) and refills with copies of random elites with one gene moved by U(-0.1, 0.1), clipped to
    [0, 0.9]; fitness is study-protocol perplexity (on test, as published), 9999 when the mean rate falls
    below ``target - tolerance``; every individual, elites included, is re-evaluated each generation.
  * ``default`` searches only genomes at exactly the target parameter-weighted sparsity (rate-moving
    mutations, projection after crossover), scores them on held-out validation windows with a fitness cache
    and two fidelities, and keeps the best of parents and children ((mu + lambda) elitism).

The optimizer core (``optimize``) sees only an objective ``f(genome, n_windows) -> float`` (lower is better)
and the gene sizes, so it runs on synthetic objectives without a model. Generation 0 is the initial
population and counts towards ``generations``. After every generation the state goes to
``<out>/checkpoint.json`` and ``<out>/history.csv``; rerunning the same search resumes from there.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from evoprune import EvopruneError, perplexity
from evoprune.results import ROOT, read_json, resolve_data, write_json

MODES = ("seed", "default")
FITNESS_KINDS = ("ppl", "kl")
CROSSOVERS = ("uniform", "blend", "none")
GENES = {"block": 1, "group": 2}

PENALTY = 9999.0
SEED_G_MAX = 0.9
SEED_INIT = (0.40, 0.60)
SEED_MUTATION = 0.1
STUDY_STRIDE = 512
INIT_MOVES_PER_GENE = 4  # random rate moves that spread an initial individual away from uniform
UNIQUE_TRIES = 20        # attempts at a child that is not already in the population
MOVE_TRIES = 50          # attempts at a gene pair that can give and take one step
EPS = 1e-12
KEY_DECIMALS = 9

CHECKPOINT, RESULT, HISTORY = "checkpoint.json", "result.json", "history.csv"
HISTORY_COLUMNS = ("generation", "best", "mean", "evaluations", "forward_tokens", "wall_s")

COMMON_DEFAULTS = {"seq_len": 1024, "batch_size": 4}
MODE_DEFAULTS = {
    "seed": {"population": 20, "generations": 50, "fitness_split": "test", "fitness_windows": 128,
             "tolerance": 0.05},
    "default": {"population": 16, "generations": 50, "fitness_split": "validation", "fitness_windows": 16,
                "offspring": None, "crossover": "uniform", "step": 0.025, "max_moves": 3, "g_max": 0.9,
                "low_windows": 1, "promote": 2, "tournament": 2},
}

Objective = Callable[[list, int], float]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- configuration -------------------------------------------------------------------------------------------

def search_config(model: str, data: str | None, target: float, mode: str = "default",
                  criterion: str = "magnitude", population: int | None = None, generations: int | None = None,
                  seed: int = 0, fitness_split: str | None = None, fitness: str = "ppl",
                  fitness_windows: int | None = None, test_windows: int | None = None, dtype: str = "bfloat16",
                  genes: str = "block", test_dtype: str = "float32", **options) -> dict:
    """Validate a search's settings and fill in its mode's defaults. Options left as None take the defaults;
    an option of the other mode is an error rather than silently ignored."""
    from evoprune.data import HUB, default_data
    from evoprune.pruning import get_criterion

    if mode not in MODES:
        raise EvopruneError(f"unknown --mode {mode!r}: use seed (the published GA) or default.")
    other = "default" if mode == "seed" else "seed"
    known = set(COMMON_DEFAULTS) | set(MODE_DEFAULTS["seed"]) | set(MODE_DEFAULTS["default"])
    for name in options:
        if name not in known:
            raise EvopruneError(f"unknown search option {name!r}: use one of {', '.join(sorted(known))}.")
    given = {"population": population, "generations": generations, "fitness_split": fitness_split,
             "fitness_windows": fitness_windows, **options}
    given = {k: v for k, v in given.items() if v is not None}
    for name in given:
        if name in MODE_DEFAULTS[other] and name not in MODE_DEFAULTS[mode]:
            raise EvopruneError(f"{flag(name)} applies to --mode {other} only: drop it or use --mode {other}.")
    get_criterion(criterion)
    perplexity.get_dtype(dtype)
    perplexity.get_dtype(test_dtype)
    data = data or default_data()
    config = {"model": model, "data": portable_data(data), "mode": mode,
              "criterion": criterion, "target": float(target), "seed": int(seed), "fitness": fitness,
              "genes": genes, "test_windows": test_windows, "dtype": dtype,
              "test_dtype": test_dtype,
              **COMMON_DEFAULTS, **MODE_DEFAULTS[mode], **given}
    if mode == "default" and config["offspring"] is None:
        config["offspring"] = config["population"]
    check_config(config)
    return config


def portable_data(data: str) -> str:
    """A data directory as a path relative to the repository root (how profiles name it), so the config, and
    with it the committed results, mean the same search in a clone elsewhere with the data beside it."""
    from evoprune.data import HUB, PYTHON_DOCS
    return data if data in (HUB, PYTHON_DOCS) else os.path.relpath(os.path.abspath(data), ROOT)


def check_config(config: dict) -> None:
    from evoprune.data import SPLITS
    mode, target = config["mode"], config["target"]
    g_max = SEED_G_MAX if mode == "seed" else config["g_max"]
    if not 0.0 < target < 1.0:
        raise EvopruneError(f"--target {target} is not a sparsity: give a fraction strictly between 0 and 1 "
                            f"(0.5 prunes half the block weights).")
    if not 0.0 < g_max <= 1.0:
        raise EvopruneError(f"--g-max {g_max} is not a rate: give a number in (0, 1].")
    if target > g_max:
        fix = "the published GA clips rates at 0.9" if mode == "seed" else "raise --g-max"
        raise EvopruneError(f"--target {target} is above the largest rate a gene may take ({g_max}): lower "
                            f"--target ({fix}).")
    if config["population"] < 2:
        raise EvopruneError("--population must be at least 2.")
    if config["generations"] < 1:
        raise EvopruneError("--generations must be at least 1 (generation 0 is the initial population).")
    if config["fitness"] not in FITNESS_KINDS:
        raise EvopruneError(f"unknown --fitness {config['fitness']!r}: use ppl or kl.")
    if config["genes"] not in GENES:
        raise EvopruneError(f"unknown --genes {config['genes']!r}: use block (one rate per block) or group "
                            f"(attention and MLP rates per block).")
    if config["fitness_split"] not in SPLITS:
        raise EvopruneError(f"unknown --fitness-split {config['fitness_split']!r}: use validation or test.")
    positive = ["fitness_windows", "test_windows", "batch_size", "offspring", "max_moves", "low_windows",
                "promote", "tournament"]
    for name in positive:
        if config.get(name) is not None and config[name] < 1:
            raise EvopruneError(f"{flag(name)} must be at least 1.")
    if config["seq_len"] < 2:
        raise EvopruneError("--seq-len must be at least 2.")
    if mode == "seed":
        if config["fitness"] != "ppl":
            raise EvopruneError("--mode seed uses the published fitness (study-protocol perplexity): drop "
                                "--fitness or use --mode default.")
        if config["genes"] != "block":
            raise EvopruneError("--mode seed is the published GA, one gene per block: drop --genes or use "
                                "--mode default.")
        if config["tolerance"] < 0:
            raise EvopruneError("--tolerance must be zero or more.")
    else:
        if config["fitness_split"] == "test":
            raise EvopruneError("--mode default keeps the test split held out: use --fitness-split validation "
                                "(or --mode seed to reproduce the published fitness on test).")
        if config["crossover"] not in CROSSOVERS:
            raise EvopruneError(f"unknown --crossover {config['crossover']!r}: use {', '.join(CROSSOVERS)}.")
        if not 0.0 < config["step"] <= g_max:
            raise EvopruneError(f"--step {config['step']} must be in (0, --g-max].")


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


def make_child(population, fitness, rng: np.random.Generator, config: dict, sizes) -> np.ndarray:
    target, g_max = config["target"], config["g_max"]
    child = np.asarray(population[tournament(fitness, rng, config["tournament"])], dtype=float)
    if config["crossover"] != "none":
        other = np.asarray(population[tournament(fitness, rng, config["tournament"])], dtype=float)
        child = project(cross(child, other, rng, config["crossover"]), sizes, target, g_max)
    moves = int(rng.integers(1, config["max_moves"] + 1))
    return project(move_rates(child, sizes, rng, config["step"], moves, g_max), sizes, target, g_max)


def default_offspring(population, fitness, rng: np.random.Generator, config: dict, sizes) -> list[list[float]]:
    """Up to ``offspring`` children, none equal to a parent or to each other."""
    seen = {genome_key(p) for p in population}
    children = []
    for _ in range(config["offspring"]):
        for _ in range(UNIQUE_TRIES):
            child = make_child(population, fitness, rng, config, sizes)
            if genome_key(child) not in seen:
                seen.add(genome_key(child))
                children.append(child.tolist())
                break
    return children


def default_initial(rng: np.random.Generator, config: dict, sizes) -> list[list[float]]:
    """The uniform vector plus random walks away from it, all at exactly the target."""
    uniform = np.full(len(sizes), config["target"])
    population, seen = [uniform.tolist()], {genome_key(uniform)}
    for _ in range(config["population"] * UNIQUE_TRIES):
        if len(population) == config["population"]:
            break
        walk = move_rates(uniform, sizes, rng, config["step"], INIT_MOVES_PER_GENE * len(sizes), config["g_max"])
        genome = project(walk, sizes, config["target"], config["g_max"])
        if genome_key(genome) not in seen:
            seen.add(genome_key(genome))
            population.append(genome.tolist())
    return population


def seed_initial(rng: np.random.Generator, population: int, n_genes: int) -> list[list[float]]:
    return rng.uniform(*SEED_INIT, size=(population, n_genes)).tolist()


def seed_offspring(population, fitness, rng: np.random.Generator) -> list[list[float]]:
    """The published generation step: the best half (at least 2) kept unchanged, then copies of random elites
    with one random gene moved by U(-0.1, 0.1) and clipped to [0, 0.9]. No crossover."""
    n_elite = max(2, len(population) // 2)
    elites = [list(population[i]) for i in np.argsort(fitness, kind="stable")[:n_elite]]
    children = []
    for _ in range(len(population) - n_elite):
        child = list(elites[rng.integers(n_elite)])
        gene = rng.integers(len(child))
        child[gene] = float(np.clip(child[gene] + rng.uniform(-SEED_MUTATION, SEED_MUTATION), 0.0, SEED_G_MAX))
        children.append(child)
    return elites + children


# --- the optimizer -------------------------------------------------------------------------------------------

class Evaluator:
    """Calls the objective and counts its cost; with ``cache`` no (genome, windows) pair is evaluated twice."""

    def __init__(self, objective: Objective, seq_len: int, cache: bool):
        self.objective = objective
        self.seq_len = seq_len
        self.use_cache = cache
        self.cache: dict[tuple, float] = {}
        self.evaluations = 0
        self.forward_tokens = 0

    def __call__(self, genome, n_windows: int) -> float:
        key = (genome_key(genome), n_windows)
        if key in self.cache:
            return self.cache[key]
        value = float(self.objective([float(g) for g in genome], n_windows))
        value = math.inf if math.isnan(value) else value  # a broken model ranks last instead of breaking sorts
        self.evaluations += 1
        self.forward_tokens += n_windows * self.seq_len
        if self.use_cache:
            self.cache[key] = value
        return value


class Search:
    """One search's state; ``run`` advances it generation by generation, checkpointing into ``out``."""

    def __init__(self, objective: Objective, sizes: Sequence[int], config: dict, out: Path | None = None,
                 progress: bool = False):
        self.config = config
        self.sizes = [int(s) for s in sizes]
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.seed_mode = config["mode"] == "seed"
        self.evaluator = Evaluator(objective, config["seq_len"], cache=not self.seed_mode)
        self.rng = np.random.default_rng(config["seed"])
        self.generation = 0
        self.population: list[list[float]] = []
        self.fitness: list[float] = []
        self.history: list[dict] = []
        self.best = math.inf
        self.best_at: dict | None = None
        self.wall_before = 0.0  # seconds spent in earlier, interrupted runs
        self.started = time.perf_counter()
        if self.out is not None and (self.out / CHECKPOINT).is_file():
            self.load()
        else:
            self.evaluator.forward_tokens = getattr(objective, "setup_tokens", 0)

    @property
    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.fitness))

    @property
    def best_genome(self) -> list[float]:
        return self.population[self.best_index]

    @property
    def best_fitness(self) -> float:
        return self.fitness[self.best_index]

    def run(self) -> "Search":
        self.started = time.perf_counter()
        total = self.config["generations"]
        with tqdm(total=total, initial=self.generation, desc=f"search ({self.config['mode']})", unit="gen",
                  disable=not self.progress) as bar:
            while self.generation < total:
                self.step()
                self.save()
                bar.set_postfix(best=f"{self.best_fitness:.4g}", evals=self.evaluator.evaluations,
                                tokens=f"{self.evaluator.forward_tokens:.3g}", refresh=False)
                bar.update()
        return self

    def step(self) -> None:
        if self.seed_mode:
            population = (seed_initial(self.rng, self.config["population"], len(self.sizes)) if self.generation == 0
                          else seed_offspring(self.population, self.fitness, self.rng))
            fitness = [self.score(genome) for genome in population]
        elif self.generation == 0:
            population = default_initial(self.rng, self.config, self.sizes)
            fitness = [self.score(genome) for genome in population]
        else:
            population, fitness = self.default_generation()
        self.population, self.fitness = population, fitness
        self.history.append({"generation": self.generation, "best": min(fitness), "mean": float(np.mean(fitness)),
                             "evaluations": self.evaluator.evaluations,
                             "forward_tokens": self.evaluator.forward_tokens, "wall_s": round(self.wall_s, 3)})
        self.generation += 1

    def score(self, genome) -> float:
        """Full-fidelity fitness (with the seed mode's penalty), noting when the best so far was first reached."""
        config = self.config
        if self.seed_mode and weighted_mean(genome, self.sizes) < config["target"] - config["tolerance"]:
            value = PENALTY
        else:
            value = self.evaluator(genome, config["fitness_windows"])
        if value < self.best:
            self.best = value
            self.best_at = {"generation": self.generation, "evaluations": self.evaluator.evaluations,
                            "forward_tokens": self.evaluator.forward_tokens, "wall_s": round(self.wall_s, 3)}
        return value

    def default_generation(self) -> tuple[list, list]:
        """Children scored on ``low_windows``; the best ``promote`` rescored on all windows compete with the
        parents, and the best ``population`` of both survive."""
        config = self.config
        children = default_offspring(self.population, self.fitness, self.rng, config, self.sizes)
        if config["low_windows"] < config["fitness_windows"]:
            low = [self.evaluator(child, config["low_windows"]) for child in children]
            children = [children[i] for i in np.argsort(low, kind="stable")[: config["promote"]]]
        pool = list(zip(self.fitness, self.population)) + [(self.score(c), c) for c in children]
        survivors = sorted(range(len(pool)), key=lambda i: (pool[i][0], i))[: config["population"]]
        return [pool[i][1] for i in survivors], [pool[i][0] for i in survivors]

    # --- checkpoints ---

    def save(self) -> None:
        if self.out is None:
            return
        write_json(self.out / CHECKPOINT, {
            "config": self.config, "generation": self.generation, "population": self.population,
            "fitness": self.fitness, "rng": self.rng.bit_generator.state,
            "evaluations": self.evaluator.evaluations, "forward_tokens": self.evaluator.forward_tokens,
            "wall_s": self.wall_s, "best": self.best, "best_at": self.best_at, "history": self.history,
            "cache": [[list(genome), n, value] for (genome, n), value in self.evaluator.cache.items()]})
        write_history(self.out / HISTORY, self.history)

    def load(self) -> None:
        state = read_json(self.out / CHECKPOINT)
        if state["config"] != self.config:
            raise EvopruneError(f"--out {self.out} holds a checkpoint of a different search: use another --out, "
                                f"or delete {self.out} to start over.")
        self.generation, self.population, self.fitness = state["generation"], state["population"], state["fitness"]
        self.rng.bit_generator.state = state["rng"]
        self.evaluator.evaluations, self.evaluator.forward_tokens = state["evaluations"], state["forward_tokens"]
        self.evaluator.cache = {(tuple(genome), n): value for genome, n, value in state["cache"]}
        self.wall_before, self.best, self.best_at = state["wall_s"], state["best"], state["best_at"]
        self.history = state["history"]


def optimize(objective: Objective, sizes: Sequence[int], config: dict, out: Path | None = None,
             progress: bool = False) -> Search:
    """Run (or resume, from ``out``) a search on any objective ``f(genome, n_windows) -> float``."""
    return Search(objective, sizes, config, out, progress).run()


def write_history(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


# --- the model objective -------------------------------------------------------------------------------------

@torch.inference_mode()
def token_log_probs(model: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Log-probabilities of every next-token distribution: shape (B, L-1, vocab), float32."""
    hidden = perplexity.final_hidden(model, batch, dtype)
    rows = [logits.log_softmax(-1) for _, logits in perplexity.chunk_logits(model, hidden, dtype)]
    return torch.cat(rows).view(*hidden.shape[:2], -1)


@torch.inference_mode()
def mean_kl(model: torch.nn.Module, wins: torch.Tensor, dense_log_probs: torch.Tensor, batch_size: int,
            dtype: torch.dtype) -> float:
    """Mean over predicted tokens of KL(dense || model), formed chunk by chunk like the perplexity."""
    total = 0.0
    for start in range(0, len(wins), batch_size):
        hidden = perplexity.final_hidden(model, wins[start: start + batch_size], dtype)
        reference = dense_log_probs[start: start + batch_size].reshape(-1, dense_log_probs.shape[-1])
        for row, logits in perplexity.chunk_logits(model, hidden, dtype):
            ref = reference[row: row + len(logits)].float().to(logits.device)
            total += (ref.exp() * (ref - logits.log_softmax(-1))).sum().double().item()
    return total / (len(wins) * (wins.shape[1] - 1))


class ModelObjective:
    """Fitness of a genome: prune the model (a copy in the fitness dtype) in place, then score the first ``n``
    fitness windows."""

    def __init__(self, pruner, ids: torch.Tensor, config: dict):
        self.ids, self.config = ids, config
        self.study = config["mode"] == "seed"
        self.dtype = perplexity.get_dtype(config["dtype"])
        self.pruner = pruner.in_dtype(self.dtype)
        self.model = self.pruner.model
        self.seq_len, self.batch_size = config["seq_len"], config["batch_size"]
        self.check_windows(config["fitness_windows"])
        self.cached_windows: dict[int, torch.Tensor] = {}
        self.dense = None
        self.setup_tokens = 0
        if config["fitness"] == "kl":
            self.pruner.restore()
            wins = self.windows(config["fitness_windows"])
            self.dense = torch.cat([token_log_probs(self.model, wins[s: s + self.batch_size], self.dtype)
                                    .to(torch.bfloat16) for s in range(0, len(wins), self.batch_size)])
            self.setup_tokens = wins.numel()

    def check_windows(self, n: int) -> None:
        tokens = self.ids.numel()
        if self.study:
            available = (tokens - self.seq_len) // STUDY_STRIDE + 1 if tokens >= self.seq_len else 0
        else:
            available = tokens // self.seq_len
        if n > available:
            raise EvopruneError(f"--fitness-windows {n} is more than the {available} windows of "
                                f"{self.seq_len} tokens the {self.config['fitness_split']} split holds: lower it.")

    def windows(self, n: int) -> torch.Tensor:
        if n not in self.cached_windows:
            self.cached_windows[n] = (perplexity.study_windows(self.ids, self.seq_len, STUDY_STRIDE, n)
                                      if self.study else perplexity.windows(self.ids, self.seq_len, n))
        return self.cached_windows[n]

    def __call__(self, genome: list, n: int) -> float:
        self.pruner.apply(genome)
        wins = self.windows(n)
        if self.dense is not None:
            return mean_kl(self.model, wins, self.dense[:n], self.batch_size, self.dtype)
        score = perplexity.study if self.study else perplexity.primary
        return score(self.model, wins, self.batch_size, self.dtype).ppl


# --- run_search: model, data, result files -------------------------------------------------------------------

def finished_result(out: Path, config: dict) -> dict | None:
    """The result of this very search if ``out`` holds it; an error if ``out`` holds anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise EvopruneError(f"--out {out} is a file: give a directory for the search's results.")
    if not any(out.iterdir()):
        return None
    for name in (RESULT, CHECKPOINT):
        if (out / name).is_file():
            saved = read_json(out / name)
            if saved.get("config") != config:
                raise EvopruneError(f"--out {out} holds a different search ({name} has another config): use a "
                                    f"new --out, or delete {out} to start over.")
            return saved if name == RESULT else None
    raise EvopruneError(f"--out {out} is not empty and holds no search: give a new or empty directory.")


def measure_test(pruner, genome, inputs: "SearchInputs", config: dict) -> dict:
    """Reported numbers for one genome: test split, primary and study protocols, in ``test_dtype`` (float32
    unless a run asks otherwise)."""
    pruner.apply(genome)
    measured = {protocol: inputs.log.perplexity(pruner, inputs.loaded.weights_hash, inputs.tokens("test"), protocol,
                                                config["test_windows"], config["test_dtype"],
                                                seq_len=config["seq_len"], stride=STUDY_STRIDE,
                                                batch_size=config["batch_size"])
                for protocol in ("primary", "study")}
    return {**measured, "block_sparsity": pruner.block_sparsity(), "model_sparsity": pruner.model_sparsity()}


class SearchInputs:
    """What every search over one model, data setting, criterion and gene layout needs, built once: the float32
    model and its pruner, the pruner's copies in fitness dtypes, token splits, and the measurement log.
    ``experiments.ga_sweep`` shares one between its runs."""

    def __init__(self, model: str, data: str, criterion: str = "magnitude", genes: str = "block",
                 log: str | Path | None = None):
        from evoprune import models
        from evoprune.pruning import CALIBRATION_WINDOWS, Pruner, get_criterion
        from evoprune.results import MeasurementLog
        self.key = (model, data, criterion, genes)
        self.loaded = models.load_model(model)  # float32; fitness runs on a copy whose matrices are in its dtype
        self.splits: dict = {}
        calibration = None
        if get_criterion(criterion).needs_calibration:
            calibration = perplexity.windows(self.tokens("validation").ids, max_windows=CALIBRATION_WINDOWS)
        self.pruner = Pruner(self.loaded.model, criterion, GENES[genes], calibration)
        self.copies: dict[str, object] = {}
        self.log = MeasurementLog(log)

    def tokens(self, split: str):
        from evoprune.data import load_tokens
        if split not in self.splits:
            self.splits[split] = load_tokens(self.loaded.tokenizer, self.key[1], split)
        return self.splits[split]

    def in_dtype(self, dtype: str):
        if dtype not in self.copies:
            self.copies[dtype] = self.pruner.in_dtype(perplexity.get_dtype(dtype))
        return self.copies[dtype]


def protocol_record(p: perplexity.Perplexity, dtype: str) -> dict:
    return {"protocol": p.protocol, "split": "test", "dtype": dtype, "n_windows": p.n_windows,
            "n_tokens": p.n_tokens}


def run_search(model: str, data: str | None, target: float, out, mode: str = "default",
               criterion: str = "magnitude", population: int | None = None, generations: int | None = None,
               seed: int = 0, fitness_split: str | None = None, fitness: str = "ppl",
               fitness_windows: int | None = None, test_windows: int | None = None, dtype: str = "bfloat16",
               genes: str = "block", test_dtype: str = "float32", progress: bool = True,
               log: str | Path | None = None, inputs: SearchInputs | None = None, **options) -> dict:
    """Search for the rate vector with the best fitness at ``target`` sparsity; write and return result.json.
    ``log``: a measurement log for the test numbers (``results.MeasurementLog``); ``inputs``: a ``SearchInputs``
    to share with other runs (built here if None).

    Options (None = the mode's default): seq_len, batch_size; seed mode: tolerance; default mode: offspring,
    crossover, step, max_moves, g_max, low_windows, promote, tournament.
    """
    from evoprune.data import HUB, local_file
    from evoprune.results import provenance

    config = search_config(model, data, target, mode, criterion, population, generations, seed, fitness_split,
                           fitness, fitness_windows, test_windows, dtype, genes, test_dtype, **options)
    out = Path(out)
    done = finished_result(out, config)
    if done is not None:
        print(f"{out / RESULT} already holds this search (same config): not recomputed.", file=sys.stderr)
        return done
    data_setting = resolve_data(config["data"])
    if data_setting != HUB:
        for split in (config["fitness_split"], "test"):
            local_file(data_setting, split)
    key = (model, data_setting, criterion, genes)
    if inputs is None:
        inputs = SearchInputs(*key, log)
    elif inputs.key != key:
        raise EvopruneError(f"run_search was given SearchInputs for {inputs.key}, not for {key}.")
    loaded, pruner = inputs.loaded, inputs.pruner
    fit_tokens, test_tokens = inputs.tokens(config["fitness_split"]), inputs.tokens("test")
    objective = ModelObjective(inputs.in_dtype(config["dtype"]), fit_tokens.ids, config)
    search = optimize(objective, pruner.gene_sizes(), config, out, progress)

    n = config["fitness_windows"]
    uniform = [config["target"]] * pruner.n_genes
    uniform_key = (genome_key(uniform), n)
    cache = search.evaluator.cache
    uniform_fitness = cache[uniform_key] if uniform_key in cache else objective(uniform, n)
    reporter = objective.pruner if test_dtype == config["dtype"] else pruner  # the fitness copy when it fits
    best = measure_test(reporter, search.best_genome, inputs, config)
    base = measure_test(reporter, uniform, inputs, config)
    pruner.restore()

    fitness_protocol = {"kind": config["fitness"], "protocol": "study" if mode == "seed" else "primary",
                        "split": config["fitness_split"], "n_windows": n, "seq_len": config["seq_len"],
                        "dtype": config["dtype"]}
    result = {
        "mode": mode, "criterion": criterion, "target": config["target"], "genome": search.best_genome,
        "block_sparsity": best["block_sparsity"], "model_sparsity": best["model_sparsity"],
        "fitness": search.best_fitness, "fitness_kind": config["fitness"], "fitness_split": config["fitness_split"],
        "test_ppl": best["primary"].ppl, "seed_protocol_ppl": best["study"].ppl,
        "uniform": {"genome": uniform, "fitness": uniform_fitness, "test_ppl": base["primary"].ppl,
                    "seed_protocol_ppl": base["study"].ppl, "block_sparsity": base["block_sparsity"],
                    "model_sparsity": base["model_sparsity"]},
        "evaluations": search.evaluator.evaluations, "forward_tokens": search.evaluator.forward_tokens,
        "wall_s": search.history[-1]["wall_s"], "best_found_at": search.best_at, "config": config,
        "provenance": provenance(
            model=model, weights=loaded.weights_hash,
            data={"fitness": fit_tokens.provenance(), "test": test_tokens.provenance()},
            seed=config["seed"], dtype={"fitness": config["dtype"], "test": test_dtype}, criterion=criterion,
            protocols={"fitness": fitness_protocol, "test_ppl": protocol_record(best["primary"], test_dtype),
                       "seed_protocol_ppl": protocol_record(best["study"], test_dtype)}),
    }
    write_json(out / RESULT, result)
    return result


# --- command line --------------------------------------------------------------------------------------------

OPTION_HELP = {
    "tolerance": (float, "seed mode: penalty below target - tolerance (default 0.05)"),
    "offspring": (int, "default mode: children per generation (default: --population)"),
    "crossover": (str, "default mode: uniform, blend or none (default uniform)"),
    "step": (float, "default mode: rate moved per mutation step (default 0.025)"),
    "max_moves": (int, "default mode: a mutation makes 1..max-moves steps (default 3)"),
    "g_max": (float, "default mode: largest rate of a gene (default 0.9)"),
    "low_windows": (int, "default mode: windows of the first, cheap scoring of children (default 1)"),
    "promote": (int, "default mode: children rescored on all fitness windows (default 2)"),
    "tournament": (int, "default mode: tournament size of parent selection (default 2)"),
}


def cmd_search(args) -> dict:
    options = {name: getattr(args, name) for name in OPTION_HELP if getattr(args, name) is not None}
    return run_search(args.model, args.data, args.target, args.out, mode=args.mode, criterion=args.criterion,
                      population=args.population, generations=args.generations, seed=args.seed,
                      fitness_split=args.fitness_split, fitness=args.fitness, fitness_windows=args.fitness_windows,
                      test_windows=args.test_windows, dtype=args.dtype, genes=args.genes,
                      test_dtype=args.test_dtype, progress=not args.no_progress, seq_len=args.seq_len, batch_size=args.batch_size, **options)


def add_search_parser(sub, add_model_args: Callable[..., None]) -> None:
    p = sub.add_parser("search", help="evolutionary search for per-block pruning rates at a target sparsity",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, dtype="bfloat16")  # the fitness dtype; reported numbers: --test-dtype
    p.set_defaults(run=cmd_search)
    p.add_argument("--target", type=float, required=True, help="parameter-weighted block sparsity, e.g. 0.5")
    p.add_argument("--out", required=True, help="directory for result.json, history.csv and the checkpoint")
    p.add_argument("--mode", default="default", help="seed (the published GA) or default")
    p.add_argument("--population", type=int, help="individuals (default: seed 20, default 16)")
    p.add_argument("--generations", type=int, help="generations, the initial one included (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fitness-split", help="seed mode: test (published) or validation; default mode: validation")
    p.add_argument("--fitness", default="ppl", help="ppl or kl (KL divergence from the dense model; default mode)")
    p.add_argument("--fitness-windows", type=int, help="fitness windows (default: seed 128, default 16)")
    p.add_argument("--test-windows", type=int, help="windows of the reported test numbers (default: all)")
    p.add_argument("--test-dtype", default="float32", help="dtype of the reported test numbers (default float32)")
    p.add_argument("--genes", default="block", help="block (one rate per block) or group (attention, MLP)")
    for name, (kind, text) in OPTION_HELP.items():
        p.add_argument(flag(name), type=kind, help=text)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# --- whole-block removal: a GA over sets of exactly k removed blocks ----------------------------------------

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
