"""The study's second half (methods.py, notebook 05): what its table, claims and figures make of the cells."""
import pytest

from evoprune import EvopruneError, methods
from evoprune.records import report_paths, write_json


def cell(criterion, target, method, test, docs, seed=None, sparsity=None, n_blocks=3):
    rate = target if sparsity is None else sparsity
    return {"criterion": criterion, "target": target, "method": method, "seed": seed, "test_ppl": test,
            "docs_ppl": docs, "test_windows": 32, "docs_windows": 16, "block_sparsity": rate,
            "genome": [rate] * n_blocks, "attention": [rate] * n_blocks, "mlp": [rate] * n_blocks}


RUN = {"git_commit": "abcdef1234", "fitness_dtype": "float32",
       "hardware": {"cpu": "Xeon", "cores": 2, "capability": "AVX512"}}
DENSE = {**cell("dense", 0.0, "dense", 20.0, 10.0), "criterion": "dense"}


def study():
    return [DENSE,
            cell("wanda", 0.5, "uniform", 50.0, 30.0), cell("wanda", 0.5, "OWL", 40.0, 35.0),
            cell("wanda", 0.5, "race", 36.0, 27.0, seed=0), cell("wanda", 0.5, "race", 38.0, 29.0, seed=1),
            cell("sparsegpt", 0.7, "uniform", 300.0, 100.0), cell("sparsegpt", 0.7, "AlphaPruning", 200.0, 120.0),
            cell("sparsegpt", 0.7, "race", 100.0, 60.0, seed=0, sparsity=0.7001),
            cell("sparsegpt", 0.7, "race", 140.0, 70.0, seed=1)]


def test_the_race_is_set_against_the_best_rule_on_each_text():
    claims = {c["what"]: c for c in methods.claims(study())}
    on_test = claims["wanda 50%: race (mean of 2 seeds) / the best rule (OWL), test"]
    assert on_test["measured"] == pytest.approx(37.0 / 40.0) and on_test["met"] is False  # bound 0.92
    on_docs = claims["wanda 50%: race (mean of 2 seeds) / the best rule (uniform), python-docs"]
    assert on_docs["measured"] == pytest.approx(28.0 / 30.0)
    sparse = claims["sparsegpt 70%: race (mean of 2 seeds) / the best rule (AlphaPruning), test"]
    assert sparse["measured"] == pytest.approx(0.6) and sparse["met"] is True  # bound 0.6, inclusive


def test_the_best_model_is_a_race_mean_never_its_best_seed():
    best = methods.best_model(study(), 0.7)
    assert best["method"] == "race (mean of 2)" and best["test_ppl"] == pytest.approx(120.0)
    claims = {c["what"]: c for c in methods.claims(study())}
    assert claims["the best model at 70% (sparsegpt, race (mean of 2)) / dense, test"]["measured"] == 6.0
    assert claims["the best model at 50% (wanda, race (mean of 2)) / dense, test"]["met"] is False  # 1.85 > 1.6


def test_one_seed_makes_no_claim():
    rows = [r for r in study() if not (r["method"] == "race" and r["seed"] == 1)]
    assert not [c for c in methods.claims(rows) if "race (mean" in c["what"] and "dense" not in c["what"]]


def test_frontier_points_sit_at_the_measured_sparsity_with_the_seeds_range():
    lines = methods.frontier(study())
    race = lines["sparsegpt"]["race"][0]
    assert race["sparsity"] == pytest.approx((0.7001 + 0.7) / 2)
    assert (race["ppl"], race["low"], race["high"]) == (120.0, 100.0, 140.0)
    assert lines["wanda"]["best rule"][0]["method"] == "OWL"


def test_table_and_heatmap_rows_cover_every_cell():
    table = methods.table(study())
    assert [(r["criterion"], r["target"]) for r in table] == [("wanda", 0.5), ("sparsegpt", 0.7)]
    assert table[0]["race"] == 37.0 and table[0]["seeds"] == 2 and table[0]["OWL"] == 40.0
    labels = [r["label"] for r in methods.heatmap_rows(study())]
    assert labels == ["wanda 50% race s0", "wanda 50% race s1", "wanda 50% OWL",
                      "sparsegpt 70% race s0", "sparsegpt 70% race s1", "sparsegpt 70% AlphaPruning"]


def test_downstream_takes_the_first_seed_and_the_best_rule():
    plan = methods.downstream_plan(study(), [0.5, 0.7])
    assert list(plan["magnitude"]) == ["dense"]
    assert list(plan["wanda"]) == ["50% OWL", "50% race s0"]
    assert list(plan["sparsegpt"]) == ["70% AlphaPruning", "70% race s0"]


def test_downstream_rows_name_their_cell_without_its_genome(monkeypatch):
    def accuracy_table(session, plan, tasks, limit):
        return [{"criterion": c, "name": name, "genome": genome, "task": tasks[0], "accuracy": 0.5}
                for c, genomes in plan.items() for name, genome in genomes.items()]
    monkeypatch.setattr(methods, "accuracy_table", accuracy_table)
    rows = methods.downstream(None, study(), ["wikitext_lastword"], 10, [0.7])
    assert [(r["criterion"], r["name"]) for r in rows] == [
        ("dense", "dense"), ("sparsegpt", "70% AlphaPruning"), ("sparsegpt", "70% race s0")]
    assert all("genome" not in r for r in rows) and rows[0]["test_ppl"] == DENSE["test_ppl"]


def test_another_profiles_cells_join_only_on_the_same_windows(tmp_path):
    other = report_paths("other", tmp_path)
    write_json(other.record("methods"), {"rows": study()})
    joined = methods.other_profiles_rows(["other"], [DENSE], tmp_path)
    assert len(joined) == len(study()) - 1 and all(r["profile"] == "other" for r in joined)
    with pytest.raises(EvopruneError, match="same model, data and windows"):
        methods.other_profiles_rows(["other"], [{**DENSE, "test_windows": 64}], tmp_path)
    with pytest.raises(EvopruneError, match="same model, data and windows"):
        methods.other_profiles_rows(["other"], [{**DENSE, "test_ppl": DENSE["test_ppl"] * 1.001}], tmp_path)
    another_cpu = {**DENSE, "test_ppl": DENSE["test_ppl"] * (1 + 1e-6)}  # float32 kernels differ in the last digits
    assert len(methods.other_profiles_rows(["other"], [another_cpu], tmp_path)) == len(joined)
    with pytest.raises(EvopruneError, match="05_methods"):
        methods.other_profiles_rows(["missing"], [DENSE], tmp_path)


def test_group_rates_are_removed_weights_per_block_and_group():
    from types import SimpleNamespace as NS
    matrices = [NS(block=0, group=0, numel=100), NS(block=0, group=1, numel=300), NS(block=1, group=0, numel=100),
                NS(block=1, group=1, numel=100)]
    pruner = NS(n_blocks=2, matrices=matrices, removed=[50, 30, 0, 100])
    assert methods.group_rates(pruner) == {"attention": [0.5, 0.0], "mlp": [0.1, 1.0]}


def test_figures_render(tmp_path):
    from evoprune import plots
    frontier = plots.save_figure(plots.frontier(methods.frontier(study()), 20.0, "m"), tmp_path / "f.png")
    heatmap = plots.save_figure(plots.allocation_heatmap(methods.heatmap_rows(study())), tmp_path / "h.png")
    for png in (frontier, heatmap):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_readme_second_half_is_generated_from_the_last_profiles_record():
    from evoprune.readme import README, second_half_record, second_half_section
    expected = second_half_section(*reversed(second_half_record()))
    assert expected in README.read_text(), "README's second half differs from its record: `make readme`"


def test_readme_second_half_shows_the_first_part_and_names_the_part_not_run(tmp_path):
    from evoprune.readme import second_half_record, second_half_section
    assert second_half_record(tmp_path) == ("offline-sparsegpt", None)
    record = {"rows": study(), "table": methods.table(study()), "claims": methods.claims(study()),
              "provenance": {**RUN, "model": "m", "with_profiles": [], "test_windows": 32, "docs_windows": 16,
                             "race_seeds": {"wanda": [0, 1]}, "race": {"strategy": "race", "budget_tokens": 100000}}}
    write_json(report_paths("offline-wanda", tmp_path).record("methods"), record)
    write_json(report_paths("offline-wanda", tmp_path).timings, {"05_methods": {"wall_s": 5400.0}})
    profile, read = second_half_record(tmp_path)
    text = second_half_section(read, profile)
    assert profile == "offline-wanda" and "profiles `offline-wanda`" in text
    assert "Not run yet at this commit: `offline-sparsegpt` (`make reproduce PROFILE=offline-sparsegpt`" in text
    assert "`offline-wanda` ran at commit abcdef1 on Xeon (2 cores, CPU capability AVX512)" in text
    assert "05_methods 5400 s" in text and "wanda 2 seeds, 100,000 forward tokens, moves of 0.05" in text
    assert "Not run yet" not in second_half_section(read, "offline-sparsegpt")


def test_readme_second_half_joins_the_profiles_it_is_shown_with(tmp_path):
    from evoprune.readme import second_half_record, second_half_section
    prov = {**RUN, "model": "m", "test_windows": 32, "docs_windows": 16, "race": {"strategy": "race",
                                                                                 "budget_tokens": 100000}}
    wanda = [r for r in study() if r["criterion"] in ("dense", "wanda")]
    sparse = [r for r in study() if r["criterion"] in ("dense", "sparsegpt")]
    write_json(report_paths("offline-wanda", tmp_path).record("methods"),
               {"rows": wanda, "provenance": {**prov, "with_profiles": [], "race_seeds": {"wanda": [0, 1]}}})
    write_json(report_paths("offline-sparsegpt", tmp_path).record("methods"),
               {"rows": sparse, "table": methods.table(study()), "claims": methods.claims(study()),
                "provenance": {**prov, "git_commit": "0123456789", "with_profiles": ["offline-wanda"],
                               "race_seeds": {"sparsegpt": [0, 1]}}})
    profile, record = second_half_record(tmp_path)
    assert profile == "offline-sparsegpt" and len(record["rows"]) == len(study()) and list(record["parts"]) == [
        "offline-wanda", "offline-sparsegpt"]
    text = second_half_section(record, profile)
    assert "`offline-wanda` ran at commit abcdef1" in text and "`offline-sparsegpt` ran at commit 0123456" in text
    assert "wanda 2 seeds, 100,000 forward tokens, moves of 0.05 (adaptive step) (`offline-wanda`)" in text
    assert "sparsegpt 2 seeds, 100,000 forward tokens, switches between its levels 0.1 apart" in text
    # the best model over dense comes from both profiles' rows: wanda's race at 50%, sparsegpt's at 70%
    assert "1.85x at 50% (wanda, race (mean of 2)" in text and "6.00x at 70% (sparsegpt, race (mean of 2)" in text


def test_second_half_section_shows_the_table_and_the_targets():
    from evoprune.readme import second_half_section
    rows = study()
    record = {"rows": rows, "table": methods.table(rows), "claims": methods.claims(rows),
              "provenance": {**RUN, "model": "m", "with_profiles": ["offline-wanda"], "test_windows": 32,
                             "docs_windows": 16, "race_seeds": {"sparsegpt": [0, 1]},
                             "race": {"strategy": "race", "budget_tokens": 150000}}}
    text = second_half_section(record)
    assert "profiles `offline-wanda`, `offline-sparsegpt`" in text and "| sparsegpt | 0.7 |" in text
    met = sum(c["met"] for c in record["claims"])
    assert f"{met} of the {len(record['claims'])} targets are met" in text
    assert "Not run yet" in second_half_section(None)


def test_readings_name_the_best_model_and_the_seeds_agreement():
    from evoprune import readings
    text = readings.frontier(methods.frontier(study()), 20.0)
    assert "wanda: 1.85x dense at 50% (race)" in text and "sparsegpt: 6.00x dense at 70% (race)" in text
    agreement = methods.seed_agreement(study())
    assert [(r["criterion"], r["seeds"]) for r in agreement] == [("wanda", 2), ("sparsegpt", 2)]
    assert "mean attention rate 50%" in readings.seed_agreement(agreement)


def test_seeds_that_kept_one_rate_have_no_rank_correlation():
    from evoprune import readings
    flat = [r for r in study() if r["criterion"] == "wanda"]
    for r in flat:
        if r["method"] == "race":
            r["attention"] = r["mlp"] = [r["target"]] * len(r["attention"])
    [row] = methods.seed_agreement(flat)
    assert row["rank_correlation"] is None
    assert "no rank correlation" in readings.seed_agreement([row]) and "nan" not in readings.seed_agreement([row])
