# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The searches: does a search beat the rules, on text it never saw?
# A search looks for the rate vector (one rate per block, or an attention and an MLP rate per block) with the
# best *fitness*, the perplexity on a few validation windows, at a sparsity target. Each entry of `runs` is one
# search with its own budget:
#
# - **`published`**: the study's GA as published: a population, one-gene mutations, elites re-scored, and a
#   penalty below target - tolerance with no upper bound; here with its fitness on validation (held out).
# - **`elitist`**: this project's GA with the flaws fixed: every genome rescaled to *exactly* the target,
#   fitness on validation, no genome scored twice, cheap windows first (multi-fidelity).
# - **`race`**: EvoPress-style (1 + lambda), exactly at the target, starting from the best of uniform, OWL and
#   the sensitivity ranking; each generation's children are raced on a *fresh* validation sample, the
#   promising ones on larger samples, so no search can learn a fixed set of windows.
#
# Then each best genome is scored as 01 and 02 score: test split, both protocols, float32, `test_windows`
# windows. A finished search in `reports/<profile>/search/<run>/` is read back, not recomputed; an interrupted one
# resumes from its checkpoint.
#
# Beyond the study: the GA over sets of exactly `removal["k"]` removed blocks, an export round trip, and
# downstream accuracy (magnitude; notebook 05 compares the criteria and allocations people use).
#
# Reads `baseline.json` (01: its sensitivity scan, one of the rules a race starts from). Writes
# `search/<run>/{result.json,history.csv}`, `ga.json`, `removal_ga_exports.json`, `downstream.json` (when it has
# tasks), `tables/{ga_genomes,convergence,generalization,rules_at_target,overfitting}` and
# `figures/<profile>/convergence.png`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
criterion = "magnitude"
test_windows = 1  # None: the whole test split (and the study protocol's 128 windows)
study_windows = None  # study-protocol windows (None: as test_windows)
docs_windows = None  # windows of the second held-out text, python-docs (None: as test_windows)
runs = {  # run name -> search.Settings and objective.FitnessSpec keywords; published: penalty below target - tolerance
    "published": {"strategy": "published", "target": 0.5, "fitness_split": "validation", "population": 4,
                  "generations": 2, "fitness_windows": 1},
    "elitist": {"strategy": "elitist", "target": 0.45, "population": 4, "generations": 2, "fitness_windows": 1},
}
seed = 0
dtype = "auto"  # of the searches' fitness and the removal GA (auto: bfloat16 where measured fast)
removal_windows = 1  # first test windows of the removal GA's best set (in dtype)
removal = {"k": 2, "population": 4, "generations": 2, "fitness_windows": 1}
export_windows = 1
downstream_tasks = []  # lm-evaluation-harness tasks (offline: wikitext_lastword); [] skips them
downstream_limit = None  # items per task (None: all)
downstream_target = 0.45  # dense, uniform and the GA runs at this target (magnitude)

# %%
from IPython.display import Image, Markdown, display

from evoprune import experiments, hardware, plots, readings, records, report, search_runs, stats

paths = records.report_paths(profile)
session = experiments.open_session(model, data, paths)
sensitivity = experiments.sensitivity_ppl(paths)  # 01's scan: a race starts from its ranking
shared = {"criterion": criterion, "seed": seed, "test_windows": test_windows, "study_windows": study_windows,
          "dtype": dtype}
settings = {name: search_runs.search_settings(session, run, **shared) for name, run in runs.items()}
found = {}  # run name -> its record (result.json)

# %% [markdown]
# ## Step 1: the published GA
# The study's operators at this profile's budget. Its fitness is on validation, so unlike the study's own number
# its test perplexity is held out. Its target is a penalty, as published, so its sparsity is whatever the
# search ended at, at least target - tolerance.

# %%
for name, (s, spec) in settings.items():
    if s.strategy == "published":
        found[name] = search_runs.run_search(session, s, spec, paths.search(name), sensitivity=sensitivity)
        display(Markdown(readings.search(name, found[name])))

# %% [markdown]
# ## Step 2: the searches at an exact target
# The same question with the flaws fixed: every genome has exactly the target's block sparsity, so a search's
# gain over uniform at that sparsity is the gain of *where* it prunes, nothing else.

# %%
for name, (s, spec) in settings.items():
    if s.strategy != "published":
        found[name] = search_runs.run_search(session, s, spec, paths.search(name), sensitivity=sensitivity)
        display(Markdown(readings.search(name, found[name])))

# %%
ga_rows = [search_runs.ga_row(found[name], name) for name in runs]
Markdown(records.markdown_table(ga_rows, ["run", "strategy", "block_sparsity", "fitness", "fitness_split", "test_ppl",
                                          "study_ppl", "evaluations", "forward_tokens", "wall_s"]))

# %% [markdown]
# ## Step 3: against the rules at the same target
# Uniform, OWL, AlphaPruning and the sensitivity ranking at each exact target (one rate per block), measured as a best genome
# is: test, float32, primary protocol, `test_windows` windows. A search is worth its cost only if it beats the
# best of them.

# %%
rules, rule_rows = {}, []
for s, spec in settings.values():
    if s.strategy != "published" and (spec.criterion, s.target) not in rules:  # one rate per block
        rules[spec.criterion, s.target] = search_runs.rule_allocations(session, s.target, "block", sensitivity,
                                                                       spec.criterion, spec.dtype)
        rule_rows += experiments.rule_rows(session, spec.criterion, s.target, rules[spec.criterion, s.target],
                                           test_windows)
display(Markdown(records.markdown_table(rule_rows, ["criterion", "target", "method", "test_ppl", "test_windows"])))
display(Markdown(readings.rules(rule_rows, ga_rows)))

# %% [markdown]
# ## Step 4: a second held-out text
# WikiText's validation and test splits are alike. `python-docs` (standard-library docstrings) is a text that no
# fitness ever scored: each best genome against uniform and the rules there (float32, primary protocol).

# %%
held_out = [experiments.generalization(session, found[name], name,
                                       test_windows if docs_windows is None else docs_windows,
                                       rules.get((found[name].config["criterion"], found[name].config["target"])))
            for name in runs]
display(Markdown(records.markdown_table(held_out)))
display(Markdown(readings.generalization(held_out)))

# %% [markdown]
# ## Step 5: did a search learn its fitness data?
# Each search's gain over uniform at the same sparsity on the split its fitness came from (its first windows,
# fixed for every search), beside its gain on test.

# %%
overfit = [experiments.overfitting(session, found[name], name) for name in runs]
display(Markdown(records.markdown_table(overfit)))
display(Markdown(readings.overfitting(overfit)))

# %% [markdown]
# ## Step 6: convergence, and the record
# Each search's best fitness per generation against the forward tokens it spent (a race: its parent's fitness
# on each fresh sample, and the paired progress of child over parent on the same sample).

# %%
histories = report.histories(paths, runs)
records.write_table(held_out, paths.table("generalization"))
records.write_table(experiments.genome_table(ga_rows, session.n_blocks), paths.table("ga_genomes"))
records.write_table([{"run": name, **row} for name, rows in histories.items() for row in rows],
                    paths.table("convergence"))
records.write_table(rule_rows, paths.table("rules_at_target"))
records.write_table(overfit, paths.table("overfitting"))
ga = experiments.record(paths, "ga", "03_ga_search", session,
                        {"rows": ga_rows, "rules": rule_rows, "generalization": held_out, "overfitting": overfit},
                        criterion=criterion, seed=seed, runs=runs, search_dtype=hardware.resolve_dtype(dtype),
                        test_windows=test_windows, study_windows=study_windows, docs_windows=docs_windows)
display(Image(plots.save_figure(plots.convergence(histories, report.race_progress(paths, ga_rows),
                                                  stats.run_groups(ga_rows)), paths.figure("convergence"))))
display(Markdown(readings.convergence(histories, ga_rows)))

# %% [markdown]
# ## Beyond the study (1): which whole blocks to remove
# A GA over sets of exactly `removal["k"]` blocks, fitness the validation perplexity of the model without them;
# the best set measured like 02's block removal.

# %%
fitness_dtype = hardware.resolve_dtype(dtype)
removal_ga = search_runs.removal_run(session, out=paths.search("removal"), test_windows=removal_windows, seed=seed,
                                     dtype=fitness_dtype, **removal)
display(Markdown(readings.removal_search(removal_ga)))

# %% [markdown]
# ## Beyond the study (2): the pruned models as files
# The best genome of the first race run (else of the first search that is not the published GA) and the best
# removal set, saved as Hugging Face directories and reloaded: the same perplexity after the round trip means the
# file is the model measured here.

# %%
exported = experiments.exported_run(ga_rows)
exports = [experiments.export_check(session, experiments.export_dir(paths.profile, f"ga-{exported['run']}"),
                                    genome=exported["genome"], criterion=exported["criterion"],
                                    n_windows=export_windows),
           experiments.export_check(session, experiments.export_dir(paths.profile, "removal"),
                                    removed=removal_ga.genome, n_windows=export_windows)]
display(Markdown(records.markdown_table(exports)))
display(Markdown(readings.exports(exports)))

# %%
experiments.record(paths, "removal_ga_exports", "03_ga_search", session,
                   {"removal_ga": removal_ga.to_dict(), "exports": exports, "exported_run": exported["run"]},
                   seed=seed, removal=removal, removal_windows=removal_windows, fitness_dtype=fitness_dtype,
                   export_windows=export_windows, dtype_decision=hardware.dtype_decision());

# %% [markdown]
# ## Beyond the study (3): downstream accuracy beside perplexity
# lm-evaluation-harness tasks for the dense model, uniform and the searches at `downstream_target` (magnitude),
# beside their test perplexity on `test_windows` windows (notebook 05: the other criteria).

# %%
downstream = experiments.downstream_study(session, paths, downstream_tasks, downstream_limit, downstream_target, ga,
                                          test_windows)
if downstream:
    display(Markdown(records.markdown_table(downstream)))
display(Markdown(readings.downstream(downstream)))

# %%
experiments.finish(paths, "03_ga_search", session)
