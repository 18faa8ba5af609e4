"""The optimizer: evolutionary search for per-gene pruning rates on any objective. No torch, no model, no data.

An objective is ``f(genome, sample) -> float`` (lower is better), a sample being the first n windows or a fresh
sample (``strategies.fresh_sample``); one with a ``map(genomes, sample)`` method scores a batch at once
(``workers.open_pool`` spreads a batch over processes or Ray actors), and its ``tokens_per_window`` is what the
budget counts per window scored. Three strategies (``strategies``: published, elitist, race) share one generation
loop (``Search``). What the objective measures (model, data, criterion, ...) is not the optimizer's business:
``objective.FitnessSpec`` declares it, and a caller passes it as ``context``, part of the search's identity.

Generation 0 is the initial population and counts towards ``generations``. After every generation the state goes
to ``<out>/checkpoint.json`` and ``<out>/history.csv``; rerunning the same search resumes from there. The result
(``Search.outcome()``) hands out what callers need of the state: the best genome, the budget spent, the rules'
start scores and the race's progress; nothing outside this module reads the checkpoint.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from evoprune import EvopruneError
from evoprune.options import OWN, STRATEGIES, applying, flag, option, strategy_defaults
from evoprune.records import read_json, write_csv, write_json
from evoprune.strategies import (PENALTY, PUBLISHED_G_MAX, STRATEGY_CLASSES, Race, fresh_sample, genome_key,
                                 sample_windows)

CROSSOVERS = ("uniform", "blend", "none")
STEP_RULES = ("adaptive", "fixed")

CHECKPOINT, RESULT, HISTORY = "checkpoint.json", "result.json", "history.csv"
HISTORY_COLUMNS = ("generation", "best", "mean", "evaluations", "forward_tokens", "wall_s")

Objective = Callable[[list, int], float]


# --- settings: declared once ---------------------------------------------------------------------------------

@dataclass
class Settings:
    """What defines the optimizer's run. The command line's flags, the profiles' run entries and the identity a
    checkpoint is resumed under come from these fields (and the fitness spec's). None means the strategy's
    default."""
    target: float = option("parameter-weighted block sparsity, e.g. 0.45", default=None)
    strategy: str = option("published (the study's GA), elitist (exact target, cached, multi-fidelity) or race "
                           "((1 + lambda) from the best rule, children raced on fresh samples)", default="elitist")
    seed: int = option("random seed of the search", default=0)
    population: int | None = option("individuals", ("published", "elitist"), published=20, elitist=16)
    generations: int | None = option("generations, the initial one included", published=50, elitist=50,
                                     race=1000)
    budget_tokens: int | None = option("stop after the generation that reaches this many forward tokens; a "
                                       "finished search given a larger budget continues", OWN)
    fitness_windows: int | None = option("fitness windows (the full-fidelity sample)", ("published", "elitist"),
                                         published=128, elitist=16)
    tolerance: float | None = option("penalty below target - tolerance", ("published",), published=0.05)
    offspring: int | None = option("children per generation (elitist default: population)", OWN, race=16)
    crossover: str | None = option("uniform, blend or none", ("elitist",), elitist="uniform")
    step: float | None = option("rate moved per mutation step (race: the first generation's)", OWN, elitist=0.025,
                                race=0.05)
    step_rule: str | None = option("adaptive (the step grows while children beat the parent and shrinks when they "
                                   "stop: the 1/5 success rule) or fixed", ("race",), race="adaptive")
    max_moves: int | None = option("a mutation makes 1..max-moves steps", OWN, elitist=3, race=3)
    g_max: float | None = option("largest rate of a gene", OWN, elitist=0.9, race=0.9)
    low_windows: int | None = option("windows of the first, cheap scoring of children (race: of the first stage; "
                                     "each stage doubles them)", OWN, elitist=1, race=1)
    promote: int | None = option("children re-scored on more windows (race: after the first stage; halved after "
                                 "each later one)", OWN, elitist=2, race=4)
    tournament: int | None = option("tournament size of parent selection", ("elitist",), elitist=2)
    stages: int | None = option("race stages; the last one's best child meets the parent on its sample",
                                ("race",), race=3)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise EvopruneError(f"unknown --strategy {self.strategy!r}: use published (the study's GA), elitist "
                                f"or race.")
        strategy_defaults(self, self.strategy)
        if self.strategy == "elitist" and self.offspring is None:
            self.offspring = self.population
        self.check()

    @classmethod
    def from_dict(cls, values: dict) -> "Settings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise EvopruneError(f"unknown search setting {unknown[0]!r}: use one of {', '.join(sorted(known))}.")
        return cls(**values)

    @classmethod
    def from_config(cls, config: dict) -> "Settings":
        """The settings of a search's identity (which holds the fitness spec's fields too)."""
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})

    def as_config(self) -> dict:
        """The settings that apply to this strategy: the optimizer's part of the identity a checkpoint or result
        is resumed under."""
        return applying(self, self.strategy)

    @property
    def stage_windows(self) -> list[int]:
        """Race: the windows of each stage's fresh sample."""
        return [self.low_windows * 2 ** stage for stage in range(self.stages)]

    @property
    def g_limit(self) -> float:
        return PUBLISHED_G_MAX if self.strategy == "published" else self.g_max

    def check(self) -> None:
        target, g_max = self.target, self.g_limit
        if not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
            raise EvopruneError(f"--target {target} is not a sparsity: give a fraction strictly between 0 and 1 "
                                f"(0.5 prunes half the block weights).")
        if not 0.0 < g_max <= 1.0:
            raise EvopruneError(f"--g-max {g_max} is not a rate: give a number in (0, 1].")
        if target > g_max:
            fix = "the published GA clips rates at 0.9" if self.strategy == "published" else "raise --g-max"
            raise EvopruneError(f"--target {target} is above the largest rate a gene may take ({g_max}): lower "
                                f"--target ({fix}).")
        if self.population is not None and self.population < 2:
            raise EvopruneError("--population must be at least 2.")
        if self.generations < 1:
            raise EvopruneError("--generations must be at least 1 (generation 0 is the initial population).")
        for name, allowed in {"crossover": CROSSOVERS, "step_rule": STEP_RULES}.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise EvopruneError(f"unknown {flag(name)} {value!r}: use one of {', '.join(allowed)}.")
        for name in ("fitness_windows", "offspring", "max_moves", "low_windows", "promote", "tournament", "stages",
                     "budget_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EvopruneError(f"{flag(name)} must be at least 1.")
        if self.strategy == "published":
            if self.tolerance < 0:
                raise EvopruneError("--tolerance must be zero or more.")
        elif not 0.0 < self.step <= g_max:
            raise EvopruneError(f"--step {self.step} must be in (0, --g-max].")


# What may change between runs of one search: a larger budget continues a finished search from its checkpoint.
BUDGET_KEYS = ("generations", "budget_tokens")


def same_search(saved: dict, config: dict) -> bool:
    return {k: v for k, v in saved.items() if k not in BUDGET_KEYS} == \
        {k: v for k, v in config.items() if k not in BUDGET_KEYS}


def budget_at_least(config: dict, saved: dict) -> bool:
    """Whether ``config`` allows at least the generations and tokens that ``saved`` did (None: no token limit)."""
    more_tokens = config.get("budget_tokens") is None or (saved.get("budget_tokens") is not None and
                                                          config["budget_tokens"] >= saved["budget_tokens"])
    return config["generations"] >= saved["generations"] and more_tokens


def race_parents(state: dict) -> list[dict]:
    """Per generation of a race, from its checkpoint: the last stage's fresh ``sample``, the parent scored on it
    ``before`` and ``after`` the generation (a paired comparison: equal when the parent stayed), and the forward
    tokens spent by then. The checkpoint's cache holds every (genome, sample) scored."""
    s = Settings.from_config(state["config"])
    scored: dict[tuple, dict] = {}
    for genome, sample, value in state["cache"]:
        scored.setdefault(as_sample(sample), {})[tuple(genome)] = value
    rows, parent = [], None
    for entry in state["history"]:
        sample = fresh_sample(s.seed, entry["generation"], s.stages - 1, s.stage_windows[-1])
        scores = scored[sample]
        winner = min(scores, key=scores.get)
        rows.append({"generation": entry["generation"], "sample": sample, "forward_tokens": entry["forward_tokens"],
                     "before": scores[parent if parent is not None else winner], "after": scores[winner]})
        parent = winner
    return rows


def race_progress(state: dict) -> list[dict]:
    """A race's progress without sampling noise: after each generation, the parent's fitness relative to
    generation 0's, as the product of the paired ratios (``race_parents``). The parent's own score moves from
    sample to sample; these ratios do not."""
    relative, rows = 1.0, []
    for row in race_parents(state):
        relative *= row["after"] / row["before"]
        rows.append({"generation": row["generation"], "forward_tokens": row["forward_tokens"], "relative": relative})
    return rows


# --- scoring and the generation loop -------------------------------------------------------------------------

class Evaluator:
    """Calls the objective and counts its cost; with ``cache`` no (genome, windows) pair is evaluated twice."""

    def __init__(self, objective: Objective, cache: bool, tokens_per_window: int | None = None):
        self.objective = objective
        self.tokens_per_window = tokens_per_window or getattr(objective, "tokens_per_window", 1)
        self.use_cache = cache
        self.cache: dict[tuple, float] = {}
        self.evaluations = 0
        self.forward_tokens = 0
        self.setup_seen = 0

    def __call__(self, genome, n_windows: int) -> float:
        return self.many([genome], n_windows)[0]

    def many(self, genomes: list, n_windows) -> list[float]:
        """Fitness of each genome on a sample (``n_windows``: the first n windows, or a ``fresh_sample``), the
        objective called once per genome not yet cached (as a batch when it has a ``map`` method). ``stamps`` then
        holds, per genome, the (evaluations, forward tokens) after it."""
        keys = [(genome_key(g), n_windows) for g in genomes]
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if not self.use_cache or (key not in self.cache and key not in seen):  # twice in a batch: once
                todo.append(i)
                seen.add(key)
        batch = [[float(x) for x in genomes[i]] for i in todo]
        mapper = getattr(self.objective, "map", None)
        raw = mapper(batch, n_windows) if mapper else [self.objective(g, n_windows) for g in batch]
        setup = getattr(self.objective, "setup_tokens", 0)  # reference passes (KL's dense model) count too
        self.forward_tokens += setup - self.setup_seen
        self.setup_seen = setup
        values, self.stamps = {}, {}
        for i, value in zip(todo, raw):
            value = float(value)
            values[i] = math.inf if math.isnan(value) else value  # a broken model ranks last, sorts still work
            self.evaluations += 1
            self.forward_tokens += sample_windows(n_windows) * self.tokens_per_window
            self.stamps[i] = (self.evaluations, self.forward_tokens)
            if self.use_cache:
                self.cache[keys[i]] = values[i]
        return [values[i] if i in values else self.cache[keys[i]] for i in range(len(genomes))]


class Search:
    """One search's state; ``run`` advances it generation by generation, checkpointing into ``out``."""

    def __init__(self, objective: Objective, sizes: Sequence[int], settings: Settings, out: Path | None = None,
                 progress: bool = False, rules=None, context: dict | None = None,
                 tokens_per_window: int | None = None, grid: Sequence[float] | None = None):
        """``context``: what else defines the search (the fitness spec's fields), part of its identity;
        ``tokens_per_window``: what a scored window costs, and ``grid``: the levels genes are restricted to (a
        level database's), when the objective does not say (a worker pool)."""
        self.settings = settings
        self.config = {**settings.as_config(), **(context or {})}
        self.sizes = [int(s) for s in sizes]
        self.out = Path(out) if out is not None else None
        self.progress = progress
        grid = grid if grid is not None else getattr(objective, "grid", None)
        if grid is not None:
            if settings.strategy != "race":
                raise EvopruneError(f"this objective's genes are levels of a grid {list(grid)} (a level database): "
                                    "search it with --strategy race, whose moves are level switches.")
        self.strategy = (Race(settings, self.sizes, rules, grid) if settings.strategy == "race"
                         else STRATEGY_CLASSES[settings.strategy](settings, self.sizes))
        self.evaluator = Evaluator(objective, self.strategy.cache, tokens_per_window)
        self.rng = np.random.default_rng(settings.seed)
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

    @property
    def finished(self) -> bool:
        budget = self.settings.budget_tokens
        return self.generation >= self.settings.generations or (budget is not None and
                                                                self.evaluator.forward_tokens >= budget)

    def progress_now(self) -> int:
        """Where the progress bar stands: forward tokens against a token budget, else generations."""
        return self.evaluator.forward_tokens if self.settings.budget_tokens else self.generation

    def run(self) -> "Search":
        self.started = time.perf_counter()
        total = self.settings.budget_tokens or self.settings.generations
        unit = "tok" if self.settings.budget_tokens else "gen"
        with tqdm(total=total, initial=self.progress_now(), desc=f"search ({self.settings.strategy})", unit=unit,
                  unit_scale=unit == "tok", disable=not self.progress) as bar:
            while not self.finished:
                before = self.progress_now()
                self.step()
                self.save()
                bar.set_postfix(best=f"{self.best_fitness:.4g}", evals=self.evaluator.evaluations,
                                generation=self.generation, refresh=False)
                bar.update(self.progress_now() - before)
        return self

    def step(self) -> None:
        if self.generation == 0:
            population, fitness = self.strategy.initial(self)
        else:
            population, fitness = self.strategy.next_generation(self)
        self.population, self.fitness = population, fitness
        self.history.append({"generation": self.generation, "best": min(fitness), "mean": float(np.mean(fitness)),
                             "evaluations": self.evaluator.evaluations,
                             "forward_tokens": self.evaluator.forward_tokens, "wall_s": round(self.wall_s, 3)})
        self.generation += 1

    def note_best(self, value: float, stamp: tuple | None, force: bool = False) -> None:
        """Remember when the best fitness so far (or, with ``force``, a new race parent) was reached."""
        if value < self.best or force:
            evaluations, tokens = stamp or (self.evaluator.evaluations, self.evaluator.forward_tokens)
            self.best = value
            self.best_at = {"generation": self.generation, "evaluations": evaluations, "forward_tokens": tokens,
                            "wall_s": round(self.wall_s, 3)}

    def score_all(self, genomes: list) -> list[float]:
        """Full-fidelity fitness (the penalty where the strategy has one), noting when the best so far was first
        reached."""
        scored = [i for i, g in enumerate(genomes) if not self.strategy.penalized(g)]
        values = dict(zip(scored, self.evaluator.many([genomes[i] for i in scored], self.settings.fitness_windows)))
        stamps = {scored[i]: stamp for i, stamp in self.evaluator.stamps.items()}
        fitness = []
        for i in range(len(genomes)):
            value = values.get(i, PENALTY)
            self.note_best(value, stamps.get(i))
            fitness.append(value)
        return fitness

    # --- checkpoints ---

    def state(self) -> dict:
        """Everything a resumed run needs, as the checkpoint holds it."""
        return {
            "config": self.config, "generation": self.generation, "population": self.population,
            "fitness": self.fitness, "rng": self.rng.bit_generator.state,
            "evaluations": self.evaluator.evaluations, "forward_tokens": self.evaluator.forward_tokens,
            "wall_s": self.wall_s, "best": self.best, "best_at": self.best_at, "history": self.history,
            "start": getattr(self.strategy, "start", None), "step": getattr(self.strategy, "step", None),
            "cache": [[list(genome), n, value] for (genome, n), value in self.evaluator.cache.items()]}

    def save(self) -> None:
        if self.out is None:
            return
        write_json(self.out / CHECKPOINT, self.state())
        write_csv(self.out / HISTORY, self.history, list(HISTORY_COLUMNS))

    def load(self) -> None:
        state = read_json(self.out / CHECKPOINT)
        if not same_search(state["config"], self.config):
            raise EvopruneError(f"--out {self.out} holds a checkpoint of a different search: use another --out, "
                                f"or delete {self.out} to start over.")
        self.generation, self.population, self.fitness = state["generation"], state["population"], state["fitness"]
        self.rng.bit_generator.state = state["rng"]
        self.evaluator.evaluations, self.evaluator.forward_tokens = state["evaluations"], state["forward_tokens"]
        self.evaluator.cache = {(tuple(genome), as_sample(n)): value for genome, n, value in state["cache"]}
        self.wall_before, self.best, self.best_at = state["wall_s"], state["best"], state["best_at"]
        self.history = state["history"]
        for name in ("start", "step"):  # the race's own state
            if state.get(name) is not None:
                setattr(self.strategy, name, state[name])


    def outcome(self) -> "Outcome":
        """What callers need of a finished (or stopped) search."""
        start = dict(getattr(self.strategy, "start", None) or {})
        uniform = self.evaluator.cache.get((genome_key([self.settings.target] * len(self.sizes)),
                                            self.settings.fitness_windows))
        if not start and uniform is not None:
            start = {"uniform": uniform}
        progress = race_progress(self.state()) if self.settings.strategy == "race" else []
        return Outcome(genome=self.best_genome, fitness=self.best_fitness, evaluations=self.evaluator.evaluations,
                       forward_tokens=self.evaluator.forward_tokens, wall_s=self.history[-1]["wall_s"],
                       best_found_at=self.best_at, start=start, history=list(self.history), progress=progress)


@dataclass
class Outcome:
    """A search's result: its best genome and fitness, the budget spent (and when the best was found), each
    starting rule's fitness where the strategy scored it (``uniform`` always, when scored at full fidelity or on
    a race's first sample), the generations' history rows and, for a race, its progress on paired samples
    (``race_progress``)."""
    genome: list[float]
    fitness: float
    evaluations: int
    forward_tokens: int
    wall_s: float
    best_found_at: dict | None
    start: dict[str, float]
    history: list[dict]
    progress: list[dict]


def as_sample(saved):
    """A sample read back from JSON: a number, or a fresh sample whose lists become tuples again."""
    return saved if isinstance(saved, int) else (tuple(saved[0]), saved[1])


def optimize(objective: Objective, sizes: Sequence[int], settings: Settings, out: Path | None = None,
             progress: bool = False, rules=None, context: dict | None = None,
             tokens_per_window: int | None = None, grid: Sequence[float] | None = None) -> Search:
    """Run (or resume, from ``out``) a search on any objective ``f(genome, sample) -> float``; ``rules``: named
    genomes a race starts from besides uniform (the allocations that need no search), or a function giving them
    (called only if generation 0 runs); ``context``: the rest of the search's identity (``Search``)."""
    return Search(objective, sizes, settings, out, progress, rules, context, tokens_per_window, grid).run()


def finished_result(out: Path, config: dict) -> dict | None:
    """The result of this very search if ``out`` holds it; None if ``out`` is new, empty or holds its checkpoint;
    an error if ``out`` holds anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise EvopruneError(f"--out {out} is a file: give a directory for the search's results.")
    if not any(out.iterdir()):
        return None
    found = saved_search(out)
    if found is None:
        raise EvopruneError(f"--out {out} is not empty and holds no search: give a new or empty directory.")
    name, saved = found
    if not same_search(saved.get("config", {}), config):
        raise EvopruneError(f"--out {out} holds a different search ({name} has another config): use a "
                            f"new --out, or delete {out} to start over.")
    if not budget_at_least(config, saved["config"]):
        raise EvopruneError(f"--out {out} holds this search run with a larger budget: give at least its "
                            f"--generations {saved['config']['generations']} and --budget-tokens "
                            f"{saved['config'].get('budget_tokens')}, or use a new --out.")
    return saved if name == RESULT and saved["config"] == config else None


def saved_search(out: Path) -> tuple[str, dict] | None:
    """What ``out`` holds of a search, as (file name, its contents): its result, else its checkpoint, else None."""
    return next(((name, read_json(out / name)) for name in (RESULT, CHECKPOINT) if (out / name).is_file()), None)
