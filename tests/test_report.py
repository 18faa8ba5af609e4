"""The report's summaries of searches repeated over seeds, from records alone (no model)."""
import pytest

from evoprune.report import layer_profiles, rank_correlation, seed_table


def run(name, seed, genome, ppl, strategy="race"):
    return {"run": name, "strategy": strategy, "genome": genome, "test_ppl": ppl,
            "config": {"strategy": strategy, "target": 0.5, "seed": seed},
            "uniform_at_target": {"test_ppl": 200.0}}


def test_seeds_of_one_search_are_grouped_and_compared():
    summary = {"ga": [run("race-s0", 0, [0.4, 0.5, 0.6], 100.0), run("race-s1", 1, [0.45, 0.5, 0.55], 110.0),
                      run("race-s2", 2, [0.6, 0.5, 0.4], 120.0), run("elitist", 0, [0.5] * 3, 150.0, "elitist")]}
    assert layer_profiles(summary) == {"race-s0 (3 seeds)": [[0.4, 0.5, 0.6], [0.45, 0.5, 0.55], [0.6, 0.5, 0.4]],
                                       "elitist": [[0.5] * 3]}
    (row,) = seed_table(summary)
    assert row["seeds"] == [0, 1, 2] and row["test_ppl_mean"] == pytest.approx(110.0)
    assert (row["test_ppl_min"], row["test_ppl_max"]) == (100.0, 120.0)
    assert row["mean_over_uniform"] == pytest.approx(0.55)
    assert row["profile_rho_min"] == pytest.approx(-1.0) and row["profile_rho_mean"] == pytest.approx(-1 / 3)  # pairs: +1, -1, -1


def test_rank_correlation_is_spearmans_rho_with_shared_ranks_for_ties():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # scipy's value
