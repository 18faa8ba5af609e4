"""The optimizer: evolutionary search for per-gene pruning rates on any objective. No torch, no model, no data.

An objective is ``f(genome, n_windows) -> float`` (lower is better); one with a ``map(genomes, n_windows)`` method
scores a batch at once (``workers.open_pool`` spreads a batch over processes or Ray actors). Three strategies share
one generation loop (``Search``):

* ``published`` replays the published GA: random genes in U(0.40, 0.60); each generation keeps the best half
  (at least 2) and refills with copies of random elites with one gene moved by U(-0.1, 0.1), clipped to
  [0, 0.9]; 9999 when the mean rate falls below ``target - tolerance``; every individual, elites included, is
  re-scored each generation.
* ``elitist`` searches only genomes at exactly the target parameter-weighted sparsity (rate-moving mutations,
  projection after crossover), caches fitness, screens children on fewer windows, and keeps the best of parents
  and children ((mu + lambda) elitism).
* ``race`` (EvoPress-style (1 + lambda)) starts from the best of uniform and the rule allocations, races each
  generation's children through stages of fresh samples, and adapts the rate its moves shift to how often a
  generation's best child beats the parent (``Race``).

Generation 0 is the initial population and counts towards ``generations``. After every generation the state goes
to ``<out>/checkpoint.json`` and ``<out>/history.csv``; rerunning the same search resumes from there.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from evoprune import EvopruneError
from evoprune.results import read_json, write_csv, write_json

STRATEGIES = ("published", "elitist", "race")
FITNESS_KINDS = ("ppl", "kl")
CROSSOVERS = ("uniform", "blend", "none")
STEP_RULES = ("adaptive", "fixed")
GENES = {"block": 1, "group": 2}
DTYPES = ("auto", "float32", "bfloat16")

PENALTY = 9999.0
PUBLISHED_G_MAX = 0.9
PUBLISHED_INIT = (0.40, 0.60)
PUBLISHED_MUTATION = 0.1
STUDY_STRIDE = 512
INIT_MOVES_PER_GENE = 4  # random rate moves that spread an initial individual away from uniform
UNIQUE_TRIES = 20        # attempts at a child that is not already in the population
MOVE_TRIES = 50          # attempts at a gene pair that can give and take one step
EPS = 1e-12
STEP_GROWTH = 1.5  # race: the step grows by this after a generation whose child beat the parent and shrinks by its
                   # fourth root after one whose did not (the 1/5 success rule: a step holds where one generation in
                   # five succeeds), within STEP_RANGE times the configured step
STEP_RANGE = (0.25, 4.0)
KEY_DECIMALS = 9

CHECKPOINT, RESULT, HISTORY = "checkpoint.json", "result.json", "history.csv"
HISTORY_COLUMNS = ("generation", "best", "mean", "evaluations", "forward_tokens", "wall_s")

Objective = Callable[[list, int], float]


# --- settings: declared once ---------------------------------------------------------------------------------

def option(help: str, strategies: tuple[str, ...] = STRATEGIES, default=None, **defaults):
    """A settings field: its help text, the strategies it applies to and per-strategy defaults."""
    return field(default=default, metadata={"help": help, "strategies": strategies, "defaults": defaults})


OWN = ("elitist", "race")  # this project's strategies: exact target, held-out fitness


@dataclass
class Settings:
    """Everything that defines a search. The command line's flags, the profiles' run entries and the identity a
    checkpoint is resumed under all come from these fields. None means the strategy's default."""
    model: str = option("smollm2-135m, tiny-gpt2, a hub id (gpt2) or a local directory", default="gpt2")
    target: float = option("parameter-weighted block sparsity, e.g. 0.45", default=None)
    data: str | None = option("'wikitext2' (hub) or a local directory like ../shared/data")
    strategy: str = option("published (the study's GA), elitist (exact target, cached, multi-fidelity) or race "
                           "((1 + lambda) from the best rule, children raced on fresh samples)", default="elitist")
    criterion: str = option("magnitude or wanda", default="magnitude")
    seed: int = option("random seed of the search", default=0)
    population: int | None = option("individuals", ("published", "elitist"), published=20, elitist=16)
    generations: int | None = option("generations, the initial one included", published=50, elitist=50,
                                     race=1000)
    budget_tokens: int | None = option("stop after the generation that reaches this many forward tokens; a "
                                       "finished search given a larger budget continues", OWN)
    fitness: str = option("ppl, or kl (KL divergence from the dense model; not published)", default="ppl")
    fitness_split: str | None = option("validation, or test (published only, as the study did)",
                                       published="test", elitist="validation", race="validation")
    fitness_windows: int | None = option("fitness windows", ("published", "elitist"), published=128,
                                         elitist=16)
    test_windows: int | None = option("windows of the reported test numbers (default: all)")
    study_windows: int | None = option("windows of the reported study-protocol numbers (default: --test-windows; 0: "
                                          "none)")
    dtype: str = option("dtype of fitness: auto (bfloat16 where measured fast), float32 or bfloat16",
                        default="auto")
    test_dtype: str = option("dtype of the reported test numbers", default="float32")
    genes: str = option("block (one rate per block) or group (attention and MLP rates per block)", default="block")
    seq_len: int = option("tokens per fitness window (reported test numbers always use 1024)", default=1024)
    batch_size: int = option("windows per forward", default=4)
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
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if self.strategy not in meta["strategies"] and value is not None:
                raise EvopruneError(f"{flag(f.name)} applies to --strategy {' or '.join(meta['strategies'])} only: "
                                    f"drop it or use --strategy {meta['strategies'][0]}.")
            if value is None and self.strategy in meta["defaults"]:
                setattr(self, f.name, meta["defaults"][self.strategy])
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

    def as_config(self) -> dict:
        """The settings that apply to this strategy: the identity a checkpoint or result is resumed under."""
        return {k: v for k, v in asdict(self).items() if self.strategy in field_strategies(k)}

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
        choices = {"fitness": FITNESS_KINDS, "genes": tuple(GENES), "fitness_split": ("validation", "test"),
                   "dtype": DTYPES, "test_dtype": DTYPES[1:], "crossover": CROSSOVERS, "step_rule": STEP_RULES}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise EvopruneError(f"unknown {flag(name)} {value!r}: use one of {', '.join(allowed)}.")
        for name in ("fitness_windows", "test_windows", "batch_size", "offspring", "max_moves", "low_windows",
                     "promote", "tournament", "stages", "budget_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EvopruneError(f"{flag(name)} must be at least 1.")
        if self.study_windows is not None and self.study_windows < 0:
            raise EvopruneError("--study-windows must be at least 0 (0: no study-protocol numbers).")
        if self.seq_len < 2:
            raise EvopruneError("--seq-len must be at least 2.")
        if self.strategy == "published":
            if self.fitness != "ppl":
                raise EvopruneError("--strategy published uses the published fitness (study-protocol perplexity): "
                                    "drop --fitness or use --strategy elitist.")
            if self.genes != "block":
                raise EvopruneError("--strategy published is the published GA, one gene per block: drop --genes or "
                                    "use --strategy elitist.")
            if self.tolerance < 0:
                raise EvopruneError("--tolerance must be zero or more.")
        else:
            if self.fitness_split == "test":
                raise EvopruneError(f"--strategy {self.strategy} keeps the test split held out: use --fitness-split "
                                    f"validation (or --strategy published to reproduce the published fitness on "
                                    f"test).")
            if not 0.0 < self.step <= g_max:
                raise EvopruneError(f"--step {self.step} must be in (0, --g-max].")


def field_strategies(name: str) -> tuple[str, ...]:
    return Settings.__dataclass_fields__[name].metadata["strategies"]


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


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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


# --- the two strategies --------------------------------------------------------------------------------------

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

    def __init__(self, settings: Settings, sizes: Sequence[int], rules: dict[str, list] | None = None):
        self.settings, self.sizes = settings, sizes
        self.rules = {"uniform": [settings.target] * len(sizes), **(rules or {})}
        self.start: dict[str, float] = {}  # each rule's fitness on generation 0's sample
        self.step = settings.step  # of the next generation's moves

    def initial(self, search: "Search") -> tuple[list, list]:
        """Every rule allocation, projected onto the exact target, scored on one sample of the last stage's size;
        the best becomes the parent."""
        s = self.settings
        names = list(self.rules)
        candidates = [project(self.rules[name], self.sizes, s.target, s.g_max).tolist() for name in names]
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
            child = project(move_rates(parent, self.sizes, rng, self.step, moves, s.g_max), self.sizes, s.target,
                            s.g_max)
            if genome_key(child) not in seen:
                seen.add(genome_key(child))
                children.append(child.tolist())
        return children

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
        if self.settings.step_rule == "fixed":
            return
        low, high = self.settings.step * STEP_RANGE[0], min(self.settings.step * STEP_RANGE[1], self.settings.g_max)
        self.step = float(np.clip(self.step * STEP_GROWTH ** (1.0 if success else -0.25), low, high))

    def penalized(self, genome) -> bool:
        return False


def race_parents(state: dict) -> list[dict]:
    """Per generation of a race, from its checkpoint: the last stage's fresh ``sample``, the parent scored on it
    ``before`` and ``after`` the generation (a paired comparison: equal when the parent stayed), and the forward
    tokens spent by then. The checkpoint's cache holds every (genome, sample) scored."""
    s = Settings.from_dict(state["config"])
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


STRATEGY_CLASSES = {"published": Published, "elitist": Elitist, "race": Race}


# --- scoring and the generation loop -------------------------------------------------------------------------

class Evaluator:
    """Calls the objective and counts its cost; with ``cache`` no (genome, windows) pair is evaluated twice."""

    def __init__(self, objective: Objective, seq_len: int, cache: bool):
        self.objective = objective
        self.seq_len = seq_len
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
            self.forward_tokens += sample_windows(n_windows) * self.seq_len
            self.stamps[i] = (self.evaluations, self.forward_tokens)
            if self.use_cache:
                self.cache[keys[i]] = values[i]
        return [values[i] if i in values else self.cache[keys[i]] for i in range(len(genomes))]


class Search:
    """One search's state; ``run`` advances it generation by generation, checkpointing into ``out``."""

    def __init__(self, objective: Objective, sizes: Sequence[int], settings: Settings, out: Path | None = None,
                 progress: bool = False, rules: dict[str, list] | None = None):
        self.settings = settings
        self.config = settings.as_config()
        self.sizes = [int(s) for s in sizes]
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.strategy = (Race(settings, self.sizes, rules) if settings.strategy == "race"
                         else STRATEGY_CLASSES[settings.strategy](settings, self.sizes))
        self.evaluator = Evaluator(objective, settings.seq_len, cache=self.strategy.cache)
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

    def save(self) -> None:
        if self.out is None:
            return
        write_json(self.out / CHECKPOINT, {
            "config": self.config, "generation": self.generation, "population": self.population,
            "fitness": self.fitness, "rng": self.rng.bit_generator.state,
            "evaluations": self.evaluator.evaluations, "forward_tokens": self.evaluator.forward_tokens,
            "wall_s": self.wall_s, "best": self.best, "best_at": self.best_at, "history": self.history,
            "start": getattr(self.strategy, "start", None), "step": getattr(self.strategy, "step", None),
            "cache": [[list(genome), n, value] for (genome, n), value in self.evaluator.cache.items()]})
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


def as_sample(saved):
    """A sample read back from JSON: a number, or a fresh sample whose lists become tuples again."""
    return saved if isinstance(saved, int) else (tuple(saved[0]), saved[1])


def optimize(objective: Objective, sizes: Sequence[int], settings: Settings, out: Path | None = None,
             progress: bool = False, rules: dict[str, list] | None = None) -> Search:
    """Run (or resume, from ``out``) a search on any objective ``f(genome, sample) -> float``; ``rules``: named
    genomes a race starts from besides uniform (the allocations that need no search)."""
    return Search(objective, sizes, settings, out, progress, rules).run()


def finished_result(out: Path, config: dict) -> dict | None:
    """The result of this very search if ``out`` holds it; None if ``out`` is new, empty or holds its checkpoint;
    an error if ``out`` holds anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise EvopruneError(f"--out {out} is a file: give a directory for the search's results.")
    if not any(out.iterdir()):
        return None
    for name in (RESULT, CHECKPOINT):
        if (out / name).is_file():
            saved = read_json(out / name)
            if not same_search(saved.get("config", {}), config):
                raise EvopruneError(f"--out {out} holds a different search ({name} has another config): use a "
                                    f"new --out, or delete {out} to start over.")
            if not budget_at_least(config, saved["config"]):
                raise EvopruneError(f"--out {out} holds this search run with a larger budget: give at least its "
                                    f"--generations {saved['config']['generations']} and --budget-tokens "
                                    f"{saved['config'].get('budget_tokens')}, or use a new --out.")
            return saved if name == RESULT and saved["config"] == config else None
    raise EvopruneError(f"--out {out} is not empty and holds no search: give a new or empty directory.")
