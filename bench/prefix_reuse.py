"""Prefix reuse of hidden states (``evoprune.prefix``) on SmolLM2-135M, float32, validation windows: time of
scoring genomes with a default ``PrefixScorer`` over plain forwards, on two mutation mixes, fitness checked equal.

  * ``evopress``: one stage of ``strategies.Race`` (EvoPress-style): the parent's children (1-3 level switches:
    ``strategies.move_rates`` between two random genes) in ``prefix.scoring_order``, then the parent re-scored, all
    on the same windows;
  * ``default``: this project's default optimizer (``strategies.Elitist.offspring``: tournament parents, uniform
    crossover, projection onto the target, 1-3 rate moves); its population is scored first (untimed), then the
    children.

Also prints the expected share of block forwards skipped for those mixes and orders, from many sampled genomes
(no model runs; ``analytic``). Usage: python bench/prefix_reuse.py [--windows 1] [--children 4]; prints one
JSON line, ``prefix_reuse_ratio`` = time with reuse / without on the evopress mix, also written to
``reports/prefix_reuse.json`` with its provenance.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from evoprune import perplexity, search, strategies
from evoprune.data import default_data, load_tokens
from evoprune.models import load_model
from evoprune.prefix import EVERY, PrefixScorer, block_state, genome_counts, scoring_order, shared_prefix
from evoprune.pruning import Pruner
from evoprune.provenance import provenance
from evoprune.records import ROOT, write_json

TARGET, POPULATION, SAMPLES = 0.45, 8, 2000


def two_strategies(sizes, offspring: int) -> tuple[strategies.Elitist, strategies.Race]:
    """The project's default optimizer and its EvoPress-style race, with their default operators."""
    settings = {"target": TARGET, "offspring": offspring}
    return (strategies.Elitist(search.Settings(**settings, population=POPULATION), sizes),
            strategies.Race(search.Settings(**settings, strategy="race"), sizes))


def skipped(state, sources: list, every: int = EVERY) -> int:
    """Blocks a genome skips: its longest shared prefix with a source, down to a boundary the scorer stores."""
    same = max((shared_prefix(state, s) for s in sources), default=0)
    return same if same == len(state) else same - same % every


def skipped_in_turn(sequence: list, sources: list, keep: int | None, every: int = EVERY) -> int:
    """Blocks skipped when the states in ``sequence`` are scored in turn, each reusing ``sources`` and the
    ``keep`` states scored just before it (None: all)."""
    return sum(skipped(state, sources + (sequence[:i] if keep is None else sequence[max(0, i - keep): i]), every)
               for i, state in enumerate(sequence))


def fewer_moves_offspring(race: strategies.Race, parent, rng) -> list[list[float]]:
    """``Race.offspring`` with EvoPress's number of moves, min(randint(1, 3), randint(1, 3)) (1, 2, 3 moves with
    probabilities 5/9, 3/9, 1/9), instead of this project's uniform 1..3."""
    top = race.settings.max_moves + 1
    return race.offspring(parent, rng, lambda r: min(r.integers(1, top), r.integers(1, top)))


def race_generation(race: strategies.Race, parent, state, rng, offspring=None, every: int = EVERY) -> tuple[int, int]:
    """Blocks skipped and blocks needed (x windows) in one race generation: each stage's children in
    ``scoring_order``, each reusing the one before (as many as reusing all before, in any order), survivors drawn
    at random (fitness is not modelled), then the parent on the last stage's sample, reusing that stage's.
    ``offspring``: how children are made (``Race.offspring``); ``every``: the scorer's stored boundaries."""
    s, n = race.settings, len(state(parent))
    children = (offspring or type(race).offspring)(race, parent, rng)
    alive, saved, total = [state(c) for c in children], 0, 0
    for stage, windows in enumerate(s.stage_windows):
        sequence = sorted(alive)
        saved += windows * skipped_in_turn(sequence, [], 1, every)
        total += windows * n * len(sequence)
        keep = 1 if stage == s.stages - 1 else max(1, s.promote // 2 ** stage)
        alive = [alive[i] for i in rng.permutation(len(alive))[:keep]]
    return saved + windows * skipped(state(parent), sequence, every), total + windows * n


def analytic(pruner, rng) -> dict:
    """Expected share of block forwards skipped, from sampled genomes (no model runs), at the scorer's ``EVERY``.
    ``race``: generations of ``strategies.Race`` (8 children, stages of 1, 2, 4 windows, parent last); also with every
    boundary stored, and with EvoPress's bias towards fewer moves (``fewer_moves_offspring``). EvoPress with
    the parent scored first: ``parent_first`` (children in any order, each reusing the parent) and ``sorted``
    (parent and children in ``scoring_order``, each reusing the one before). Elitist: children only, the population
    kept from earlier generations. Published: a whole generation, elites re-scored."""
    state = lambda g: block_state(pruner, genome_counts(pruner, g))  # noqa: E731
    elitist, race = two_strategies(pruner.gene_sizes(), POPULATION)
    population = elitist.initial_population(rng)
    parents = [state(p) for p in population]
    n, out = pruner.n_blocks, {}
    variants = {"race_generation": {}, "race_generation_every_1": {"every": 1},  # every boundary stored
                "race_generation_evopress_moves": {"offspring": fewer_moves_offspring}}
    for key, options in variants.items():
        runs = [race_generation(race, population[i % POPULATION], state, rng, **options)
                for i in range(SAMPLES // 4)]
        out[key] = sum(saved for saved, _ in runs) / sum(total for _, total in runs)
    for offspring in (8, 64):
        first, ordered = [], []
        for _ in range(max(1, SAMPLES // (offspring * POPULATION))):
            for genome, parent in zip(population, parents):
                children = [state(strategies.move_rates(genome, race.sizes, rng, race.settings.step,
                                                    int(rng.integers(1, race.settings.max_moves + 1)),
                                                    race.settings.g_max)) for _ in range(offspring)]
                first.append(skipped_in_turn(children, [parent], 0) / ((offspring + 1) * n))
                ordered.append(skipped_in_turn(sorted([parent] + children), [], 1) / ((offspring + 1) * n))
        out[f"evopress_{offspring}_children_parent_first"] = np.mean(first)
        out[f"evopress_{offspring}_children_sorted"] = np.mean(ordered)
    rows = {"elitist_children": [], "elitist_children_sorted": [], "published_generation": []}
    for _ in range(SAMPLES // (4 * POPULATION)):
        fitness = rng.random(POPULATION).tolist()
        children = [state(elitist.child(population, fitness, rng)) for _ in range(POPULATION)]
        rows["elitist_children"].append(skipped_in_turn(children, parents, 0) / (POPULATION * n))
        rows["elitist_children_sorted"].append(skipped_in_turn(sorted(children), parents, 1) / (POPULATION * n))
        generation = [state(g) for g in strategies.published_offspring(population, fitness, rng)]
        rows["published_generation"].append(skipped_in_turn(generation, generation[: POPULATION // 2], 0)
                                            / (POPULATION * n))
    out.update({key: np.mean(values) for key, values in rows.items()})
    return {key: round(float(value), 4) for key, value in out.items()}


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def measure(pruner, scorer, wins, genomes: list) -> dict:
    """Scores each genome with the scorer and with a plain forward, in turn (wall and process CPU seconds), and
    checks the two fitness values equal."""
    run_before, total_before = scorer.blocks_run, scorer.blocks_total
    seconds = np.zeros(4)  # wall with, wall without, cpu with, cpu without
    equal = True
    for genome in genomes:
        pruner.apply(genome)
        reused, wall_with, cpu_with = timed(lambda: perplexity.primary(pruner.model, wins, hidden=scorer.final_hidden).ppl)
        full, wall_without, cpu_without = timed(lambda: perplexity.primary(pruner.model, wins).ppl)
        seconds += (wall_with, wall_without, cpu_with, cpu_without)
        equal = equal and reused == full
    skipped_share = 1 - (scorer.blocks_run - run_before) / (scorer.blocks_total - total_before)
    return {"wall_with_s": round(seconds[0], 2), "wall_without_s": round(seconds[1], 2),
            "ratio": round(seconds[0] / seconds[1], 4), "cpu_ratio": round(seconds[2] / seconds[3], 4),
            "blocks_skipped": round(skipped_share, 4), "equal": equal, "genomes": len(genomes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=1)
    parser.add_argument("--children", type=int, default=4)
    args = parser.parse_args()
    loaded = load_model("smollm2-135m")
    wins = perplexity.windows(load_tokens(loaded.tokenizer, default_data(), "validation").ids, 1024, args.windows)
    pruner = Pruner(loaded.model)
    rng = np.random.default_rng(0)
    elitist, race = two_strategies(pruner.gene_sizes(), args.children)
    population = elitist.initial_population(rng)
    pruner.apply(population[0])
    perplexity.primary(pruner.model, wins)  # warm-up

    parent = population[1]  # a race generation's stage: children in scoring order, then the parent re-scored
    children = race.offspring(parent, rng)
    evopress = measure(pruner, PrefixScorer(pruner), wins,
                       [children[i] for i in scoring_order(pruner, children)] + [parent])
    scorer = PrefixScorer(pruner)  # elitist: the population scored before (not timed), then the children
    fitness = []
    for genome in population:
        pruner.apply(genome)
        fitness.append(perplexity.primary(pruner.model, wins, hidden=scorer.final_hidden).ppl)
    default = measure(pruner, scorer, wins, elitist.offspring(population, fitness, rng))
    result = {"bench": "prefix_reuse", "model": loaded.name, "dtype": "float32", "windows": args.windows,
              "seq_len": 1024, "capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "evopress": evopress, "default": default,
              "prefix_reuse_ratio": evopress["ratio"], "expected_blocks_skipped": analytic(pruner, rng),
              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    write_json(ROOT / "reports" / "prefix_reuse.json",
               {"figures": result, "provenance": provenance(command="python bench/prefix_reuse.py")})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
