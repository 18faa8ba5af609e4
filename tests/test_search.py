"""The evolutionary search: operators and the optimizer on synthetic objectives, then end to end on tiny-gpt2."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from evoprune import EvopruneError
from evoprune.cli import main
from evoprune.objective import FitnessSpec, build_objective, split_settings
from evoprune.search import CHECKPOINT, HISTORY_COLUMNS, Evaluator, Settings, optimize
from evoprune.search_runs import run_search
from evoprune.session import Session
from evoprune.strategies import PENALTY, move_rates, project, published_offspring, weighted_mean

OPTIMUM = np.array([0.3, 0.7, 0.45, 0.55, 0.6, 0.4, 0.35, 0.65])  # weighted mean 0.5 for both size vectors
EQUAL = [1000] * 8
UNEQUAL = [3000, 1000] * 4


class Bowl:
    """A weighted quadratic around a feasible optimum that records every call and can die after ``fail_after``."""
    tokens_per_window = 1024  # what the optimizer's budget counts per window scored

    def __init__(self, sizes, fail_after=None):
        self.w = np.asarray(sizes, dtype=float)
        self.fail_after = fail_after
        self.calls = []

    def __call__(self, genome, n_windows):
        self.calls.append((list(genome), n_windows))
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise RuntimeError("killed")
        return float(np.dot(self.w, (np.asarray(genome) - OPTIMUM) ** 2) / self.w.sum())


def config(strategy="elitist", **options):
    return Settings(target=0.5, strategy=strategy, **options)


def outcome(search):
    """What two runs must agree on (wall-clock times aside)."""
    best_at = {k: v for k, v in search.best_at.items() if k != "wall_s"}
    history = [{k: v for k, v in row.items() if k != "wall_s"} for row in search.history]
    return {"genome": search.best_genome, "fitness": search.best_fitness, "history": history, "best_at": best_at,
            "evaluations": search.evaluator.evaluations, "forward_tokens": search.evaluator.forward_tokens}


# --- the elitist strategy on a synthetic objective -------------------------------------------------------------------

def test_elitist_finds_constrained_optimum_and_never_gets_worse():
    bowl = Bowl(EQUAL)
    search = optimize(bowl, EQUAL, config(population=8, generations=60, fitness_windows=4))
    assert np.abs(np.array(search.best_genome) - OPTIMUM).max() < 0.03
    bests = [row["best"] for row in search.history]
    assert all(later <= earlier for earlier, later in zip(bests, bests[1:]))
    assert search.best_fitness <= bowl([0.5] * 8, 4)  # uniform is in the initial population


@pytest.mark.parametrize("crossover", ["uniform", "blend", "none"])
def test_every_evaluated_genome_meets_the_target_exactly(crossover):
    bowl = Bowl(UNEQUAL)
    optimize(bowl, UNEQUAL, config(population=6, generations=15, fitness_windows=2, crossover=crossover,
                                   g_max=0.7))
    for genome, _ in bowl.calls:
        assert abs(weighted_mean(genome, UNEQUAL) - 0.5) < 1e-9
        assert min(genome) >= 0.0 and max(genome) <= 0.7


def test_projection_and_moves_keep_the_constraint():
    rng = np.random.default_rng(0)
    for _ in range(100):
        genome = project(rng.uniform(0, 1, 8), UNEQUAL, 0.5, 0.9)
        assert abs(weighted_mean(genome, UNEQUAL) - 0.5) < 1e-12 and genome.min() >= 0 and genome.max() <= 0.9
        moved = move_rates(genome, UNEQUAL, rng, 0.025, 5, 0.9)
        assert abs(weighted_mean(moved, UNEQUAL) - 0.5) < 1e-12 and moved.min() >= 0 and moved.max() <= 0.9
    lattice = [0.45, 0.55] * 4
    assert project(lattice, EQUAL, 0.5, 0.9).tolist() == lattice  # already feasible: left on the lattice


def test_multi_fidelity_promotes_few_and_counts_tokens_honestly():
    bowl = Bowl(EQUAL)
    search = optimize(bowl, EQUAL, config(population=4, generations=5, fitness_windows=4, low_windows=1,
                                          promote=2, offspring=6))
    full_calls = [n for _, n in bowl.calls].count(4)
    assert full_calls <= 4 + 2 * 4  # the initial population, then at most `promote` per generation
    assert search.evaluator.evaluations == len(bowl.calls)
    assert search.evaluator.forward_tokens == sum(n for _, n in bowl.calls) * 1024


def test_fitness_cache_never_evaluates_a_genome_twice():
    bowl = Bowl(EQUAL)
    evaluate = Evaluator(bowl, cache=True)
    genome = [0.45, 0.55] * 4
    first = evaluate(genome, 4)
    assert evaluate([g + 1e-12 for g in genome], 4) == first  # floating-point noise is the same genome
    assert len(bowl.calls) == 1 and evaluate.evaluations == 1
    evaluate(genome, 1)  # another fidelity is another evaluation
    assert len(bowl.calls) == 2

    bowl = Bowl(EQUAL)
    optimize(bowl, EQUAL, config(population=6, generations=20, fitness_windows=3))
    keys = [(tuple(round(g, 9) for g in genome), n) for genome, n in bowl.calls]
    assert len(keys) == len(set(keys))


def test_same_seed_same_history_other_seed_other_history():
    runs = [outcome(optimize(Bowl(EQUAL), EQUAL, config(population=6, generations=8, fitness_windows=2, seed=s)))
            for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0]["history"] != runs[2]["history"]


def budget(strategy, **options):
    """A small search of each strategy on the synthetic objectives."""
    if strategy == "race":
        return config("race", offspring=6, generations=8, **options)
    return config(strategy, population=6, generations=8, fitness_windows=2, **options)


@pytest.mark.parametrize("strategy", ["elitist", "published", "race"])
def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path, strategy):
    settings = budget(strategy)
    uninterrupted = outcome(optimize(Bowl(EQUAL), EQUAL, settings, tmp_path / "whole"))

    with pytest.raises(RuntimeError, match="killed"):
        optimize(Bowl(EQUAL, fail_after=25), EQUAL, settings, tmp_path / "killed")
    assert 0 < json.loads((tmp_path / "killed" / CHECKPOINT).read_text())["generation"] < 8  # died mid-run
    resumed = outcome(optimize(Bowl(EQUAL), EQUAL, settings, tmp_path / "killed"))
    assert resumed == uninterrupted

    bowl = Bowl(EQUAL)
    assert outcome(optimize(bowl, EQUAL, settings, tmp_path / "killed")) == uninterrupted
    assert bowl.calls == []  # finished: nothing is recomputed


def test_checkpoint_of_another_search_is_refused(tmp_path):
    optimize(Bowl(EQUAL), EQUAL, config(population=4, generations=2, fitness_windows=1), tmp_path)
    with pytest.raises(EvopruneError, match="--out"):
        optimize(Bowl(EQUAL), EQUAL, config(population=4, generations=2, fitness_windows=1, seed=1), tmp_path)


# --- the published strategy: the study's operators ----------------------------------------------------------------------

def test_published_offspring_follows_the_study_operators():
    rng = np.random.default_rng(3)
    population = np.clip(rng.uniform(-0.1, 1.0, (10, 12)), 0, 0.9).tolist()  # some genes sit on the bounds
    fitness = rng.uniform(0, 100, 10).tolist()
    for _ in range(20):
        children = published_offspring(population, fitness, rng)
        elites = [population[i] for i in np.argsort(fitness)[:5]]
        assert len(children) == 10 and children[:5] == elites
        for child in children[5:]:
            changed = [[abs(c - e) for c, e in zip(child, elite) if c != e] for elite in elites]
            assert any(len(diff) <= 1 and all(d <= 0.1 for d in diff) for diff in changed)
            assert min(child) >= 0.0 and max(child) <= 0.9
    assert len(published_offspring(population[:3], fitness[:3], rng)[:2]) == 2  # at least two elites


def test_published_penalizes_below_tolerance_and_reevaluates_elites():
    bowl = Bowl(EQUAL)
    target, tolerance = 0.55, 0.05  # U(0.40, 0.60) genes: about half the individuals fall below 0.50
    settings = Settings(target=target, strategy="published", population=10, generations=6, fitness_windows=2,
                        tolerance=tolerance)
    search = optimize(bowl, EQUAL, settings)
    assert all(weighted_mean(g, EQUAL) >= target - tolerance for g, _ in bowl.calls)
    for genome, fit in zip(search.population, search.fitness):
        assert (fit == PENALTY) == (weighted_mean(genome, EQUAL) < target - tolerance)
    assert search.evaluator.evaluations == len(bowl.calls)
    assert sum(g == search.best_genome for g, _ in bowl.calls) > 1  # no cache: elites are scored again
    bests = [row["best"] for row in search.history]
    assert all(later <= earlier for earlier, later in zip(bests, bests[1:]))


# --- bad configurations --------------------------------------------------------------------------------------

BAD = [
    (["--target", "0"], "--target"),
    (["--target", "1.2"], "--target"),
    (["--target", "0.95"], "--target"),
    (["--g-max", "0.4"], "--target"),
    (["--population", "1"], "--population"),
    (["--generations", "0"], "--generations"),
    (["--study-windows", "-1"], "--study-windows"),
    (["--strategy", "fancy"], "--strategy"),
    (["--fitness", "mse"], "--fitness"),
    (["--crossover", "twopoint"], "--crossover"),
    (["--genes", "neuron"], "--genes"),
    (["--criterion", "random"], "criterion"),
    (["--dtype", "float16"], "dtype"),
    (["--fitness-split", "test"], "--fitness-split validation"),
    (["--strategy", "published", "--fitness", "kl"], "--fitness"),
    (["--strategy", "published", "--crossover", "blend"], "--crossover"),
    (["--tolerance", "0.1"], "--tolerance"),
    (["--data", "/nonexistent/evoprune-data"], "data directory"),
]


@pytest.mark.parametrize("extra, named", BAD, ids=[" ".join(argv) for argv, _ in BAD])
def test_bad_configuration_exits_2_and_writes_nothing(tmp_path, capsys, extra, named):
    out = tmp_path / "out"
    argv = ["search", "--model", "tiny-gpt2", "--target", "0.5", "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_bad_configuration_raises_in_the_python_api(tmp_path):
    with pytest.raises(EvopruneError, match="--population"):
        Settings(target=0.5, population=1)


def test_out_dir_holding_something_else_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["search", "--model", "tiny-gpt2", "--target", "0.5", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err


# --- end to end on tiny-gpt2 ---------------------------------------------------------------------------------

@pytest.fixture
def data_dir():
    path = os.environ.get("EVOPRUNE_DATA_DIR")
    if not path:
        pytest.skip("set EVOPRUNE_DATA_DIR to a local WikiText-2 copy (e.g. ../shared/data) to run real searches")
    return path


def cli_search(data_dir, out, *extra):
    return ["search", "--model", "tiny-gpt2", "--data", data_dir, "--target", "0.5", "--out", str(out),
            "--strategy", "elitist", "--population", "2", "--generations", "2", "--fitness-windows", "1", "--test-windows", "2",
            "--no-progress", *extra]


def test_search_end_to_end_through_the_cli(tmp_path, capsys, data_dir):
    out = tmp_path / "run"
    assert main(cli_search(data_dir, out)) == 0
    result = json.loads((out / "result.json").read_text())
    assert set(result) == {"genome", "fitness", "spent", "config", "provenance", "start", "history", "progress",
                           "test"}
    test = result["test"]
    assert {"genome", "test_ppl", "study_ppl", "block_sparsity", "test_windows"} <= set(test["uniform"])
    assert set(result["spent"]["best_found_at"]) == {"generation", "evaluations", "forward_tokens", "wall_s"}
    assert len(result["genome"]) == 12 and abs(np.mean(result["genome"]) - 0.5) < 1e-9
    assert abs(test["block_sparsity"] - 0.5) < 1e-3  # counted zeros; each matrix rounds its own count
    assert result["fitness"] <= result["start"]["uniform"]
    assert result["config"]["fitness_split"] == "validation" and result["provenance"]["seed"] == 0
    assert test["test_windows"] == result["provenance"]["protocols"]["test_ppl"]["n_windows"] == 2
    assert 1 < test["test_ppl"] < 1000 and 1 < test["study_ppl"] < 1000
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == HISTORY_COLUMNS and [r["generation"] for r in rows] == ["0", "1"]
    assert int(rows[-1]["evaluations"]) == result["spent"]["evaluations"] == result["history"][-1]["evaluations"]

    capsys.readouterr()
    assert main(cli_search(data_dir, out)) == 0  # the same search again: read back, not recomputed
    assert "not recomputed" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text()) == result
    assert main(cli_search(data_dir, out, "--seed", "1")) == 2
    assert "--out" in capsys.readouterr().err


def test_published_end_to_end_on_validation(tmp_path, data_dir):
    settings, spec = split_settings(dict(model="tiny-gpt2", data=data_dir, target=0.5, strategy="published",
                                         population=3, generations=2, fitness_split="validation", fitness_windows=1,
                                         test_windows=1, dtype="float32"))
    assert spec.protocol == "study"  # the published strategy's default
    result = run_search(Session("tiny-gpt2", data_dir), settings, spec, tmp_path, progress=False)
    assert result.config["fitness_split"] == "validation" and result.config["protocol"] == "study"
    assert result.provenance["protocols"]["fitness"]["protocol"] == "study"
    assert result.spent.evaluations == 6  # elites re-evaluated, nothing cached
    assert set(result.start) == {"uniform"} and result.progress == []
    assert (tmp_path / "history.csv").is_file()


def test_kl_fitness_is_zero_for_the_dense_model_and_grows_with_pruning(data_dir):
    spec = FitnessSpec(model="tiny-gpt2", data=data_dir, fitness="kl", genes="group", dtype="float32")
    objective = build_objective(Session("tiny-gpt2", data_dir), spec.for_strategy("elitist"), fitness_windows=1)
    dense, light, heavy = (objective([rate] * 24, 1) for rate in (0.0, 0.3, 0.8))
    assert abs(dense) < 1e-6 and dense < light < heavy
    assert objective.setup_tokens == 1024  # one dense pass for the sample, counted as forward tokens


def test_removal_ga_finds_the_cheapest_blocks_and_keeps_k():
    from evoprune.removal import removal_search
    cost = [5, 1, 7, 2, 9, 3, 8, 6, 4, 10, 11, 12]  # removing block b costs cost[b]; best k=3 set: {1, 3, 5}
    seen = []

    def objective(removed):
        seen.append(removed)
        return sum(cost[b] for b in removed)

    result = removal_search(objective, 12, 3, population=12, generations=25, seed=0)
    assert result["removed"] == [1, 3, 5]
    assert all(len(set(r)) == 3 and list(r) == sorted(r) for r in seen)
    assert len(seen) == len(set(seen)) == result["evaluations"]  # no set evaluated twice
    bests = [h["best"] for h in result["history"]]
    assert bests == sorted(bests, reverse=True)  # elitism: the best never gets worse


@pytest.mark.parametrize("k", [0, 12, 13])
def test_removal_ga_refuses_impossible_k(k):
    from evoprune.removal import removal_search
    with pytest.raises(EvopruneError, match="between 1 and 11"):
        removal_search(lambda r: 0.0, 12, k)


def test_config_names_a_data_directory_relative_to_the_repository(tmp_path):
    """Committed results must mean the same search in a clone elsewhere with the data beside it."""
    from evoprune.data import portable_data, resolve_data
    from evoprune.records import ROOT
    data = portable_data(str(ROOT.parent / "shared" / "data"))
    assert data == os.path.join("..", "shared", "data")
    assert Path(resolve_data(data)) == ROOT.parent / "shared" / "data"
    assert portable_data("wikitext2") == "wikitext2"


def test_data_setting_round_trips_through_a_symlinked_directory(tmp_path):
    """A config names its data relative to the repository; resolving it gives back the directory as it was named,
    not the symlink's target, so a search handed ready inputs for that directory accepts them."""
    from evoprune.data import portable_data, resolve_data
    target = tmp_path / "real-data"
    target.mkdir()
    link = tmp_path / "linked-data"
    link.symlink_to(target)
    assert resolve_data(portable_data(str(link))) == str(link)


def test_settings_are_declared_once_and_the_command_line_offers_each():
    from dataclasses import fields
    from evoprune.cli import build_parser
    search = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith("search"))
    flags = {o for action in search._actions for o in action.option_strings}
    assert {"--" + f.name.replace("_", "-") for f in (*fields(Settings), *fields(FitnessSpec))} <= flags


def test_importing_the_optimizer_or_the_report_loads_no_torch():
    import subprocess
    import sys
    code = "import sys, evoprune.search, evoprune.removal, evoprune.report; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_corrupt_checkpoint_is_named_with_the_fix(tmp_path, capsys, data_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT).write_text("{bad")
    assert main(cli_search(data_dir, out)) == 2
    err = capsys.readouterr().err
    assert str(out / CHECKPOINT) in err and "Delete it" in err


# --- the race: fresh samples, staged racing, rule allocations, budgets in tokens ------------------------------

class NoisyBowl(Bowl):
    """The bowl measured on a sample: a fixed error per (genome, draw) whose size falls as 1 / sqrt(windows), as a
    perplexity on n fresh windows does."""

    def __init__(self, sizes, noise=0.02):
        super().__init__(sizes)
        self.noise = noise

    def __call__(self, genome, sample):
        self.calls.append((list(genome), sample))
        draw, n = sample
        rng = np.random.default_rng([*draw, abs(hash(tuple(round(g, 9) for g in genome))) % 2 ** 32])
        true = float(np.dot(self.w, (np.asarray(genome) - OPTIMUM) ** 2) / self.w.sum())
        return true + self.noise / np.sqrt(n) * rng.standard_normal()


def test_race_draws_a_fresh_sample_per_generation_and_stage_and_the_same_ones_on_a_rerun():
    runs = []
    for _ in range(2):
        bowl = NoisyBowl(EQUAL)
        optimize(bowl, EQUAL, config("race", offspring=4, generations=5))
        runs.append(bowl.calls)
    assert runs[0] == runs[1]
    draws = {sample[0] for _, sample in runs[0]}
    assert {(0, g, stage) for g in range(1, 5) for stage in range(3)} <= draws  # every generation, every stage
    by_generation = {}
    for _, ((seed, generation, stage), n) in runs[0]:
        by_generation.setdefault(generation, set()).add((stage, n))
    assert by_generation[1] == {(0, 1), (1, 2), (2, 4)}  # growing stages: 1, 2 and 4 windows


def test_race_reaches_the_known_optimum_through_the_noise():
    bowl = NoisyBowl(EQUAL, noise=0.0002)  # on one window, about one step's gain near the optimum
    search = optimize(bowl, EQUAL, config("race", offspring=16, generations=120, step=0.025, max_moves=2))
    assert np.abs(np.array(search.best_genome) - OPTIMUM).max() <= 0.05 + 1e-9  # two steps of 0.025
    true = float(np.mean((np.array(search.best_genome) - OPTIMUM) ** 2))
    assert true < 0.1 * float(np.mean((0.5 - OPTIMUM) ** 2))  # a tenth of where uniform starts


def test_race_step_grows_while_children_win_and_shrinks_when_they_stop():
    from evoprune.strategies import Race
    race = Race(config("race", step=0.05), EQUAL)
    race.adapt_step(True)
    for _ in range(4):
        race.adapt_step(False)
    assert race.step == pytest.approx(0.05)  # one success in five: the step holds (the 1/5 rule)
    for _ in range(10):
        race.adapt_step(True)
    assert race.step == pytest.approx(0.2)  # at most 4x the configured step
    for _ in range(100):
        race.adapt_step(False)
    assert race.step == pytest.approx(0.0125)  # at least a quarter of it
    fixed = Race(config("race", step=0.05, step_rule="fixed"), EQUAL)
    for success in (True, False, True):
        fixed.adapt_step(success)
    assert fixed.step == 0.05


def test_race_moves_grow_on_a_slope_and_the_checkpoint_keeps_them(tmp_path):
    bowl = Bowl(EQUAL)  # noiseless, uniform far from the optimum: every early generation succeeds
    search = optimize(bowl, EQUAL, config("race", offspring=4, generations=4, step=0.025), tmp_path)
    assert search.strategy.step == pytest.approx(0.025 * 1.5 ** 3)
    assert json.loads((tmp_path / CHECKPOINT).read_text())["step"] == search.strategy.step


def test_race_starts_from_the_best_rule_each_exactly_at_the_target():
    rules = {"OWL": [0.45, 0.65] * 4, "sensitivity": [0.3, 0.7, 0.45, 0.55, 0.6, 0.4, 0.35, 0.66]}  # last: off
    bowl = Bowl(UNEQUAL)
    search = optimize(bowl, UNEQUAL, config("race", offspring=4, generations=1), rules=rules)
    first = [genome for genome, _ in bowl.calls]
    assert len(first) == 3 and all(abs(weighted_mean(g, UNEQUAL) - 0.5) < 1e-9 for g in first)
    assert first[0] == [0.5] * 8 and first[1] == rules["OWL"]  # already at the target: unchanged
    assert set(search.strategy.start) == {"uniform", "OWL", "sensitivity"}
    assert search.best_genome == min(first, key=lambda g: bowl(g, None))


def test_a_race_computes_its_start_rules_only_when_generation_0_runs(tmp_path):
    asked = []

    def rules():
        asked.append(1)
        return {"OWL": [0.45, 0.65] * 4}

    first = optimize(Bowl(UNEQUAL), UNEQUAL, config("race", offspring=4, generations=2), tmp_path, rules=rules)
    resumed = optimize(Bowl(UNEQUAL), UNEQUAL, config("race", offspring=4, generations=3), tmp_path, rules=rules)
    assert asked == [1] and set(first.strategy.start) == set(resumed.strategy.start) == {"uniform", "OWL"}


def test_raising_the_token_budget_continues_to_the_result_of_the_larger_budget_from_the_start(tmp_path):
    small, large = (config("race", offspring=4, budget_tokens=tokens) for tokens in (40_000, 90_000))
    whole = outcome(optimize(Bowl(EQUAL), EQUAL, large, tmp_path / "whole"))
    first = optimize(Bowl(EQUAL), EQUAL, small, tmp_path / "grown")
    assert 40_000 <= first.evaluator.forward_tokens < whole["forward_tokens"]
    assert outcome(optimize(Bowl(EQUAL), EQUAL, large, tmp_path / "grown")) == whole
    assert whole["forward_tokens"] >= 90_000


def test_a_smaller_budget_than_a_finished_search_had_is_refused(tmp_path):
    from evoprune.search import finished_result
    optimize(Bowl(EQUAL), EQUAL, config("race", offspring=4, generations=3), tmp_path)
    with pytest.raises(EvopruneError, match="larger budget"):
        finished_result(tmp_path, config("race", offspring=4, generations=2).as_config())


def test_race_progress_is_the_product_of_paired_ratios(tmp_path):
    """On a noiseless objective the paired ratios multiply to the parent's true fitness over its start."""
    from evoprune.search import race_progress
    bowl = Bowl(EQUAL)
    search = optimize(bowl, EQUAL, config("race", offspring=4, generations=6), tmp_path)
    rows = race_progress(json.loads((tmp_path / CHECKPOINT).read_text()))
    assert [r["generation"] for r in rows] == list(range(6))
    assert [r["forward_tokens"] for r in rows] == [h["forward_tokens"] for h in search.history]
    start = search.history[0]["best"]
    assert [r["relative"] for r in rows] == pytest.approx([h["best"] / start for h in search.history])
    assert all(b["relative"] <= a["relative"] for a, b in zip(rows, rows[1:]))
    assert search.outcome().progress == rows  # the result hands out what the checkpoint holds
    assert set(search.outcome().start) == {"uniform"} and search.outcome().history == search.history
