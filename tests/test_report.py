"""The report's summaries of searches repeated over seeds, from records alone (no model)."""
import pytest

from evoprune.report import budget_words, run_words, wall_times
from evoprune.stats import (claims, fitness_comparison, layer_profiles, rank_correlation, reference_tokens,
                            seed_table)


def run(name, seed, genome, ppl, strategy="race", genes="block"):
    return {"run": name, "strategy": strategy, "genome": genome, "test_ppl": ppl,
            "config": {"strategy": strategy, "target": 0.5, "seed": seed, "genes": genes},
            "uniform_at_target": {"test_ppl": 200.0}}


def test_seeds_of_one_search_are_grouped_and_compared():
    summary = {"ga": [run("race-s0", 0, [0.4, 0.5, 0.6], 100.0), run("race-s1", 1, [0.45, 0.5, 0.55], 110.0),
                      run("race-s2", 2, [0.6, 0.5, 0.4], 120.0), run("elitist", 0, [0.5] * 3, 150.0, "elitist")],
               "parameter_counts": {"n_blocks": 3}}
    assert layer_profiles(summary) == {"race-s0": [[0.4, 0.5, 0.6], [0.45, 0.5, 0.55], [0.6, 0.5, 0.4]],
                                       "elitist": [[0.5] * 3]}
    (row,) = seed_table(summary)
    assert row["seeds"] == [0, 1, 2] and row["test_ppl_mean"] == pytest.approx(110.0)
    assert (row["test_ppl_min"], row["test_ppl_max"]) == (100.0, 120.0)
    assert row["mean_over_uniform"] == pytest.approx(0.55)
    assert row["profile_rho_min"] == pytest.approx(-1.0) and row["profile_rho_mean"] == pytest.approx(-1 / 3)  # pairs: +1, -1, -1


def test_a_search_with_attention_and_mlp_rates_gives_two_profiles_per_block():
    summary = {"ga": [run("race-s0", 0, [0.2, 0.5, 0.3, 0.6], 90.0, genes="group"),
                      run("race-s1", 1, [0.25, 0.55, 0.3, 0.5], 95.0, genes="group")],
               "parameter_counts": {"n_blocks": 2}}
    assert layer_profiles(summary) == {"race-s0 attention": [[0.2, 0.3], [0.25, 0.3]],
                                       "race-s0 MLP": [[0.5, 0.6], [0.55, 0.5]]}


def test_rank_correlation_is_spearmans_rho_with_shared_ranks_for_ties():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # scipy's value


def claims_summary():
    """Three seeds of a race at 45%, uniform 200 and two rules on test, a second text."""
    ga = [{**run(f"race-s{s}", s, [0.45] * 3, ppl), "criterion": "magnitude", "target": 0.45, "fitness_kind": "ppl"}
          for s, ppl in ((0, 90.0), (1, 100.0), (2, 110.0))]
    ga.append({**run("published", 0, [0.5] * 3, 150.0, "published"), "criterion": "magnitude", "target": 0.5})
    rules = [{"criterion": "magnitude", "target": 0.45, "method": m, "test_ppl": p}
             for m, p in (("uniform", 200.0), ("OWL", 150.0), ("sensitivity", 125.0))]
    held = [{"run": g["run"], "ga_over_uniform": 0.5, "ga_over_sensitivity": 0.8} for g in ga[:3]]
    overfit = [{"run": g["run"], "fitness_split_over_test": 0.9} for g in ga[:3]]
    return {"ga": ga, "rules": rules, "generalization": held, "overfitting": overfit}


def test_claims_compare_the_mean_of_the_seeds_with_uniform_and_the_best_rule():
    measured = {c["what"]: c for c in claims(claims_summary())}
    label = "45% magnitude, GA (mean of 3 seeds)"
    assert measured[f"{label} / uniform, test"]["measured"] == pytest.approx(0.5)
    assert measured[f"{label} / uniform, test"]["met"] is True
    best = measured[f"{label} / the best no-search allocation (sensitivity), test"]
    assert best["measured"] == pytest.approx(100 / 125) and best["met"] is True
    assert measured[f"{label} / sensitivity, python-docs"]["measured"] == pytest.approx(0.8)
    assert measured[f"{label}: gain on validation / gain on test (ratios to uniform)"]["met"] is None
    assert len(measured) == 5  # notebook 05 judges the other criteria and targets


def test_kl_reference_tokens_count_one_dense_pass_per_fresh_sample():
    config = {"low_windows": 1, "stages": 3, "seq_len": 512}
    # generation 0: one sample of the last stage (4 windows); then 1 + 2 + 4 windows per generation
    assert reference_tokens(config, 1) == 4 * 512
    assert reference_tokens(config, 5) == (4 + 4 * 7) * 512


def test_fitness_comparison_pairs_searches_that_differ_only_in_fitness():
    base = {"strategy": "race", "target": 0.45, "seed": 0, "low_windows": 1, "stages": 2, "seq_len": 512}
    ga = [{"run": "race-s0", "strategy": "race", "config": {**base, "fitness": "ppl"}, "forward_tokens": 1000,
           "evaluations": 20, "wall_s": 10.0, "test_ppl": 90.0, "uniform_at_target": {"test_ppl": 180.0}, "fitness_split": "validation",
           "generations_run": 3},
          {"run": "race-kl", "strategy": "race", "config": {**base, "fitness": "kl"}, "forward_tokens": 1000,
           "evaluations": 15, "wall_s": 14.0, "test_ppl": 99.0, "uniform_at_target": {"test_ppl": 180.0}, "fitness_split": "validation",
           "generations_run": 3},
          {"run": "race-s1", "strategy": "race", "config": {**base, "seed": 1, "fitness": "ppl"}}]
    rows = fitness_comparison({"ga": ga, "generalization": [{"run": "race-kl", "ga_over_uniform": 0.6}]},
                              {"validation": {"n_tokens": 10_000}})
    assert [(r["run"], r["fitness"]) for r in rows] == [("race-s0", "ppl"), ("race-kl", "kl")]
    assert rows[1]["test_over_uniform"] == pytest.approx(0.55) and rows[1]["python_docs_over_uniform"] == 0.6
    assert rows[1]["reference_tokens_per_sample"] == (2 + 2 * 3) * 512 and rows[1]["reference_tokens_stored"] == 10_000


def test_budget_words_name_the_strategy_and_its_budget():
    race = {"strategy": "race", "offspring": 16, "low_windows": 1, "stages": 3, "seq_len": 512,
            "budget_tokens": 100_000}
    assert budget_words(race) == ("the `race` strategy, (1 + 16) on fresh samples of 1, 2, 4 windows of 512 tokens, "
                                  "moves of 0.05 (adaptive step), 100,000 forward tokens")
    wanda_fixed = {**race, "wanda": {"step": 0.025, "step_rule": "fixed"}}
    assert budget_words(wanda_fixed) == budget_words(race) + "; wanda: moves of 0.025 (fixed step)"
    wanda_budget = {**race, "wanda": {"step": 0.025, "budget_tokens": 150_000}}
    assert budget_words(wanda_budget).endswith("; wanda: moves of 0.025 (adaptive step), 150,000 forward tokens")
    assert budget_words({"population": 6, "generations": 4}) == "the `elitist` strategy, population 6, generations 4"


def test_wall_times_count_what_was_read_back_in_words():
    prov = {"notebook_wall_s": {"02": 10.0, "03": 20.0},
            "notebook_read_back": {"02": {"searches": 1, "measurements": 2}, "03": {"searches": 0, "measurements": 1}},
            "notebook_forward_tokens": {"02": {"float32": 4096, "bfloat16": 1024}}}
    assert wall_times(prov) == ("02 10 s (4,096 float32 and 1,024 bfloat16 forward tokens; "
                                "1 search and 2 measurements read back); "
                                "03 20 s (0 searches and 1 measurement read back); 30 s (0.5 min) in all")


def test_the_run_words_say_how_make_reproduce_chose_the_profile():
    prov = {"git_commit": "abcdef0123", "hardware": {"cpu": "EPYC", "cores": 2, "capability": "AVX2"},
            "budgets": {"race": {"dtype": "float32"}}, "notebook_wall_s": {"01": 5.0}}
    assert "chose" not in run_words(prov) and "The profile was" not in run_words(prov)
    prov["profile_choice"] = {"profile": "offline", "chosen": "auto", "why": "no hub; local data found"}
    assert "The profile was auto (no hub; local data found)." in run_words(prov)
