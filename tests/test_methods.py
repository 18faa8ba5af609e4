"""Issue 6's measurements on tiny-gpt2: the rules of notebook 05, whole-block removal, the removal GA run and
the export round trip, as the notebooks call them."""
import pytest
import torch

from evoprune import EvopruneError, experiments, methods, search_runs
from evoprune.models import blocks
from evoprune.records import SearchRecord, Spent
from evoprune.hardware import resolve_dtype
from evoprune.session import Session

FAST = resolve_dtype("auto")  # bfloat16 where it is native; on AVX2-only CPUs it is emulated and far slower


@pytest.fixture(scope="module")
def setup(data_dir):
    return Session("tiny-gpt2", data_dir)


def weights(setup):
    return {k: v.clone() for k, v in setup.model.state_dict().items()}


def unchanged(setup, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in setup.model.state_dict().items())


def test_rules_meet_each_target_and_leave_the_model_dense(setup):
    before = weights(setup)
    sensitivity = [float(b % 5) for b in range(12)]
    rows = [r for criterion in ("magnitude", "wanda") for target in (0.45, 0.7)
            for r in methods.rule_cells(setup, criterion, target, sensitivity, 1, 1, FAST)]
    assert {(r["criterion"], r["method"]) for r in rows} == {(c, m) for c in ("magnitude", "wanda")
                                                              for m in methods.RULES}
    assert len(rows) == 2 * 2 * len(methods.RULES)
    for r in rows:
        assert r["block_sparsity"] == pytest.approx(r["target"], abs=1e-4), r
        assert r["test_windows"] == 1 and r["docs_windows"] == 1 and r["test_ppl"] > 1 and r["docs_ppl"] > 1
        assert len(r["attention"]) == len(r["mlp"]) == 12
    assert unchanged(setup, before)


def test_block_removal_tables_and_depths(setup):
    before = weights(setup)
    removal = experiments.block_removals(setup, n_windows=1, dtype=FAST, progress=False)
    assert [r["removed"] for r in removal["single"]] == [[b] for b in range(12)]
    assert len(removal["pairs"]) == 66  # every pair: the model has 12 blocks
    dense, one, two = removal["depths"]
    assert (dense["blocks"], one["blocks"], two["blocks"]) == (12, 11, 10)
    block = dense["parameters"] - one["parameters"]
    assert block > 0 and one["parameters"] - two["parameters"] == block
    assert one["test_ppl"] == min(r["test_ppl"] for r in removal["single"])
    assert len(blocks(setup.model)) == 12 and unchanged(setup, before)


def test_removal_run_removes_k_blocks_and_is_read_back(setup, tmp_path, monkeypatch):
    budget = {"population": 4, "generations": 2, "fitness_windows": 1, "test_windows": 1, "dtype": FAST}
    result = search_runs.removal_run(setup, 3, tmp_path, **budget)
    assert len(result.genome) == 3 and result.test["blocks"] == 9
    import evoprune.removal
    monkeypatch.setattr(evoprune.removal, "removal_search", lambda *a, **k: pytest.fail("recomputed"))
    assert search_runs.removal_run(setup, 3, tmp_path, **budget) == result
    with pytest.raises(EvopruneError, match="different"):
        search_runs.removal_run(setup, 4, tmp_path, **budget)


def test_export_round_trip_gives_the_same_perplexity(setup, tmp_path):
    saved = experiments.export_check(setup, tmp_path / "model", genome=[0.5] * 12, removed=[3], n_windows=1)
    assert saved["same_ppl"] and saved["ppl"] == saved["ppl_reloaded"]
    assert saved["nonzero_parameters"] < saved["parameters"] and saved["bytes_on_disk"] > 0
    assert (tmp_path / "model" / "config.json").is_file()
    assert saved["compressed_same_ppl"] and 0 < saved["compressed_over_dense"] < 1
    assert (tmp_path / "model-compressed" / "config.json").is_file()


def test_reported_numbers_take_their_own_study_windows(setup):
    r = setup.reported(0.3, windows=2, study_windows=1)
    assert (r["test_windows"], r["study_windows"]) == (2, 1)
    assert setup.reported(0.3, windows=2)["study_windows"] == 2


def test_no_study_windows_means_no_study_measurement(setup, monkeypatch):
    measured = []
    real = setup.measure
    monkeypatch.setattr(setup, "measure", lambda pruner, protocol="primary", *a, **k: measured.append(protocol) or
                        real(pruner, protocol, *a, **k))
    r = setup.reported(0.35, windows=1, study_windows=0)
    assert measured == ["primary"]
    assert (r["study_ppl"], r["study_windows"]) == (None, 0) and r["test_ppl"] > 1


def test_overfitting_compares_the_gain_on_the_fitness_split_with_the_gain_on_test(setup):
    uniform = [0.45] * setup.n_blocks
    genome = [0.2 if b % 2 else 0.7 for b in range(setup.n_blocks)]
    result = SearchRecord(genome=genome, fitness=1.0, spent=Spent(1, 1, 0.0), provenance={},
                          config={"criterion": "magnitude", "fitness_split": "validation"},
                          test={"test_ppl": 90.0, "uniform": {"genome": uniform, "test_ppl": 100.0}})
    row = experiments.overfitting(setup, result, "x", n_windows=2)
    assert row["windows"] == 2 and row["test_ratio"] == pytest.approx(0.9)
    assert row["fitness_split_ratio"] == pytest.approx(row["ga_ppl"] / row["uniform_ppl"])
    assert row["fitness_split_over_test"] == pytest.approx(row["fitness_split_ratio"] / 0.9)
    assert row["ga_ppl"] != row["uniform_ppl"]


def test_a_criterion_entry_of_the_method_budget_overrides_only_that_criterion():
    budget = {"strategy": "race", "step": 0.05, "budget_tokens": 60000, "wanda": {"step": 0.025, "step_rule": "fixed"}}
    assert experiments.criterion_budget(budget, "wanda") == {"strategy": "race", "step": 0.025,
                                                             "budget_tokens": 60000, "step_rule": "fixed"}
    assert experiments.criterion_budget(budget, "magnitude") == {"strategy": "race", "step": 0.05,
                                                                 "budget_tokens": 60000}


def test_the_exported_search_is_the_first_race_else_the_first_that_is_not_published():
    rows = [{"run": "published", "strategy": "published"}, {"run": "elitist", "strategy": "elitist"},
            {"run": "race-s0", "strategy": "race"}, {"run": "race-s1", "strategy": "race"}]
    assert experiments.exported_run(rows)["run"] == "race-s0"
    assert experiments.exported_run(rows[:2])["run"] == "elitist"


def test_genome_table_splits_attention_and_mlp_rates_per_block():
    rows = [{"run": "published", "genome": [0.1, 0.2], "config": {"genes": "block"}},
            {"run": "race", "genome": [0.3, 0.4, 0.5, 0.6], "config": {"genes": "group"}}]
    assert experiments.genome_table(rows, 2) == [
        {"block": 0, "GA published": 0.1, "GA race attention": 0.3, "GA race MLP": 0.4},
        {"block": 1, "GA published": 0.2, "GA race attention": 0.5, "GA race MLP": 0.6}]
