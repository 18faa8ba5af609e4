"""The notebooks' readings: every number in a sentence comes from the record it is given, and what a sentence
concludes follows the numbers (a search that loses to uniform is not said to beat it)."""
import subprocess
import sys

from evoprune import readings
from evoprune.records import SearchRecord, Spent

STUDY = {"model": "gpt2", "dense_ppl": 30.0,
         "uniform": [{"sparsity": 0.3, "ppl": 45.0}, {"sparsity": 0.45, "ppl": 240.0}],
         "ga": {"target": 0.45, "ppl": 120.0, "genome": [0.4, 0.5], "population": 20, "generation": 43,
                "generations": 50}}


def search_result(run="race", strategy="race", test_ppl=80.0, split="validation", **extra):
    config = {"target": 0.45, "seed": 0, "strategy": strategy,
              **({"tolerance": 0.05} if strategy == "published" else {})}
    return {"run": run, "strategy": strategy, "criterion": "magnitude", "target": 0.45, "genome": [0.3, 0.6],
            "block_sparsity": 0.45, "fitness": 70.0, "fitness_kind": "ppl", "fitness_split": split,
            "test_ppl": test_ppl,
            "study_ppl": 90.0, "evaluations": 120, "forward_tokens": 245760, "wall_s": 12.0, "config": config,
            "min_sparsity": 0.45, "uniform": {"test_ppl": 160.0}, "uniform_at_target": {"test_ppl": 160.0}, **extra}


def test_published_study_reads_its_ga_against_uniform():
    text = readings.published_study(STUDY)
    assert "120 for its GA at 45%" in text and "generation 43 of 50" in text and "240 for uniform" in text
    assert "(0.50x)" in text and "30 dense" in text


def test_ratios_keep_a_difference_that_two_decimals_would_hide():
    assert (readings.times(1, 2), readings.times(0.996, 1), readings.times(3, 3)) == ("0.50x", "0.996x", "1.00x")


def test_dense_reads_both_protocols_and_the_study():
    text = readings.dense({"test_ppl": 25.05, "test_windows": 64, "study_ppl": 27.31, "study_windows": 16}, STUDY)
    assert all(s in text for s in ("25.05", "64 windows", "27.31", "16 windows", "30"))


def test_parameters_share_of_the_model():
    text = readings.parameters({"total": 1000, "prunable": 800, "embeddings_and_head": 200, "n_blocks": 4})
    assert "80.0%" in text and "4 decoder blocks" in text and "36.0%" in text  # 45% of the 80% prunable


def test_sensitivity_names_the_least_and_most_tolerant_blocks():
    rows = [{"block": b, "rate": 0.5, "ppl": p, "dense_ppl": 10.0, "ppl_ratio": p / 10}
            for b, p in enumerate((12, 30, 11))]
    text = readings.sensitivity(rows, shown=1)
    assert "least for blocks 2 (1.10x)" in text and "most for blocks 1 (3.00x)" in text and "2.73" in text


def test_uniform_sweep_finds_the_cliff_and_the_studys_points():
    rows = [{"sparsity": s, "test_ppl": p, "study_ppl": p + 1} for s, p in ((0.0, 10.0), (0.3, 14.0), (0.45, 60.0))]
    text = readings.uniform_sweep(rows, STUDY)
    assert "30%: 1.40x" in text and "from 45% on" in text
    assert "45%: 8.00x" in text and "45%: 5.55x" in text  # the study's 240/30; ours 61/11 under its protocol


def test_uniform_sweep_without_a_cliff_says_none():
    rows = [{"sparsity": s, "test_ppl": p, "study_ppl": p} for s, p in ((0.0, 10.0), (0.15, 11.0))]
    assert "cliff" not in readings.uniform_sweep(rows, STUDY)


def test_block_removal_reads_the_best_and_worst_block_and_latency():
    removal = {"dense_blocks": 3, "test_windows": 2, "dtype": "float32", "pairs": None,
               "single": [{"removed": [0], "test_ppl": 900.0}, {"removed": [1], "test_ppl": 12.0}],
               "depths": [{"removed": [], "test_ppl": 10.0, "ms_per_token": 9.0},
                          {"removed": [1], "test_ppl": 12.0, "ms_per_token": 6.0}]}
    text = readings.block_removal(removal)
    assert "block 1" in text and "1.20x" in text and "block 0, 900" in text and "saves time" in text
    removal["depths"][1]["ms_per_token"] = 9.5
    assert "saves time" not in readings.block_removal(removal)


def search_record(strategy="race", split="validation", block_sparsity=0.45, start=None):
    config = {"target": 0.45, "strategy": strategy, "fitness": "ppl", "fitness_split": split,
              **({"tolerance": 0.05} if strategy == "published" else {})}
    test = {"block_sparsity": block_sparsity, "test_ppl": 80.0, "uniform": {"test_ppl": 160.0}}
    return SearchRecord(genome=[0.3, 0.6], fitness=70.0, spent=Spent(120, 245760, 12.0, None), config=config,
                        provenance={}, start=start or {"uniform": 130.0}, test=test)


def test_search_reading_tells_the_published_penalty_from_an_exact_target():
    published = readings.search("published", search_record("published", block_sparsity=0.4903))
    assert "49.03%" in published and "below 40%" in published and "held out" in published
    exact = readings.search("race", search_record(start={"uniform": 130.0, "sensitivity": 100.0}))
    assert "exactly **45.00%**" in exact and "0.50x uniform" in exact and "sensitivity (100)" in exact
    assert "not held out" in readings.search("t", search_record(split="test"))


def test_rules_compare_each_exact_search_with_the_best_rule():
    rule_rows = [{"criterion": "magnitude", "target": 0.45, "method": m, "test_ppl": p}
                 for m, p in (("uniform", 160.0), ("OWL", 120.0), ("sensitivity", 100.0))]
    text = readings.rules(rule_rows, [search_result("published", "published"), search_result(test_ppl=70.0)])
    assert "**sensitivity** (100" in text and "`race` scores 70, 0.70x" in text and "`published`" not in text
    assert "no rules" in readings.rules([], [])


def test_generalization_says_beats_only_below_one():
    text = {"text": "python-docs", "n_windows": 4, "uniform_ppl": 80.0}
    rows = [{"run": "a", **text, "ga_ppl": 40.0, "ga_over_uniform": 0.5, "ga_over_OWL": 0.8},
            {"run": "b", **text, "ga_ppl": 90.0, "ga_over_uniform": 1.125}]
    text = readings.generalization(rows)
    assert "`a` beats uniform" in text and "0.80x OWL" in text and "`b` does not beat uniform" in text


def test_overfitting_and_convergence_read_each_run():
    over = [{"run": "a", "split": "validation", "windows": 16, "fitness_split_ratio": 0.42, "test_ratio": 0.45,
             "fitness_split_over_test": 0.933}]
    assert "ratio 0.93" in readings.overfitting(over) and "16 windows" in readings.overfitting(over)
    history = {"race": [{"generation": 0, "best": 100.0, "forward_tokens": 10},
                        {"generation": 5, "best": 60.0, "forward_tokens": 4096}]}
    text = readings.convergence(history, [search_result()])
    assert "100 at generation 0 → 60 at generation 5" in text and "4,096" in text and "fresh" in text


def test_removal_exports_and_downstream():
    removal_ga = SearchRecord(genome=[2, 5], fitness=40.0, spent=Spent(9, 9000, 1.0), config={"k": 2}, provenance={},
                              test={"test_ppl": 50.0, "test_windows": 2, "dtype": "bfloat16", "blocks": 10,
                                    "parameters": 1000, "ms_per_token": 5.0, "dense_ms_per_token": 6.0})
    assert "2 and 5 (9 evaluations)" in readings.removal_search(removal_ga)
    exports = [{"dir": "/x/ga-race-s0", "ppl": 3.0, "ppl_reloaded": 3.5, "same_ppl": False, "test_windows": 1}]
    assert "`ga-race-s0`: 3 before, 3.5 after (different)" in readings.exports(exports)
    exports[0].update(compressed_bytes_on_disk=40, compressed_over_dense=0.4, compressed_same_ppl=True)
    assert "compressed 0.40x the dense size on disk with the same perplexity" in readings.exports(exports)
    assert readings.downstream([]) == "No downstream tasks in this profile."
    row = {"criterion": "magnitude", "name": "dense", "accuracy": 0.45, "task": "t", "n": 100, "test_ppl": 25.0}
    assert "0.45 on t (100 items)" in readings.downstream([row]) and "0.05" in readings.downstream([row])


def summary(ga):
    return {"dense": {"test_ppl": 20.0}, "parameter_counts": {"n_blocks": 2}, "ga": ga, "seeds": [],
            "generalization": [{"run": g["run"], "text": "python-docs", "ga_over_uniform": 0.5} for g in ga],
            "overfitting": [{"run": g["run"], "fitness_split_over_test": 0.9} for g in ga],
            "claims": [{"what": "x / uniform", "measured": 0.4, "target": "≤ 0.5", "met": True},
                       {"what": "y / rule", "measured": 0.9, "target": "≤ 0.8", "met": False},
                       {"what": "z", "measured": 0.9, "target": "reported", "met": None}],
            "removal": {"test_windows": 2, "dtype": "bfloat16", "dense_ppl": 20.0,
                        "single": [{"removed": [0], "test_ppl": 30.0}, {"removed": [1], "test_ppl": 25.0}],
                        "ga": {"settings": {"k": 2}, "evaluations": 9, "test": {"test_ppl": 60.0}}},
            "protocol": {"reported_split": "test", "reported_dtype": "float32", "primary": "P", "study": "S",
                         "test_windows": {"primary": 4, "study": 2},
                         "search": {"race": {"fitness_kind": "ppl", "fitness_split": "validation",
                                             "dtype": "bfloat16"}}}}


def test_main_runs_are_the_search_over_the_most_seeds():
    seeds = [search_result(f"race-s{i}", config={"strategy": "race", "target": 0.45, "seed": i}) for i in range(2)]
    other = search_result("elitist", "elitist")
    assert [r["run"] for r in readings.main_runs(summary([other, *seeds]))] == ["race-s0", "race-s1"]
    assert readings.main_runs(summary([search_result("published", "published")])) == []


def test_headline_profiles_and_findings_read_the_summary():
    ga = [search_result("race-s0", test_ppl=70.0, genome=[0.2, 0.7, 0.4, 0.5]),
          search_result("race-s1", test_ppl=90.0, genome=[0.2, 0.7, 0.4, 0.5],
                        config={"target": 0.45, "strategy": "race", "seed": 1})]
    s = summary(ga)
    text = readings.headline(s, STUDY)
    assert "averages **80**" in text and "**0.50x uniform**" in text and "120 for its GA at 45%" in text and "against 240" in text
    s["seeds"] = [{"search": "race-s0 (2 seeds)", "profile_rho_mean": 0.5, "profile_rho_min": 0.4, "test_ppl_min": 70.0,
                   "test_ppl_max": 90.0}]
    profile = readings.profiles(s, shown=1)  # an attention and an MLP rate per block
    assert "attention rates average 0.30" in profile and "MLP rates average 0.60" in profile
    assert "kept densest: blocks 0 (0.20)" in profile and "rho between seeds' profiles 0.50" in profile
    found = readings.findings(s, STUDY)
    assert "0.50x uniform (mean over its runs)" in found and "carries over" in found and "0.90" in found
    assert readings.claims(s["claims"]) == "1 of the 2 targets are met. Missed: y / rule (0.90, target ≤ 0.8)."
    assert readings.claims(s["claims"], listed=0) == "1 of the 2 targets are met."
    assert readings.removal(s) == ("Removing the best single block (1) gives 25 against 20 dense (2 test windows, "
                                   "bfloat16); the removal GA's best set of 2 blocks (9 evaluations) gives 60.")
    assert "every search's test number is held out" in readings.protocol(s)


def test_readings_import_no_torch():
    code = "import sys, evoprune.readings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
