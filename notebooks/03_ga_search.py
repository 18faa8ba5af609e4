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
# # 03 · GA search
# The evolutionary layer-wise search, once per entry of `runs`: the published GA (`seed` mode: penalty below
# target - tolerance, one-gene mutations, elites re-scored) and the careful optimizer (`default` mode: exact
# target, fitness on validation, cached, multi-fidelity). Each run has its own budget. A finished search in
# `reports/<profile>/search/<run>/` is read back, not recomputed; an interrupted one resumes from its checkpoint.
#
# `run_search` reports each best genome's test perplexity under both protocols in float32 on `test_windows`
# windows, the same measurement notebooks 01 and 02 make.
#
# Beyond the study: the same `default` search at every target and criterion of 02's allocation sweep, all at one
# smaller budget (`method_budget`), measured like the allocations (bfloat16, `method_windows` test windows); the
# DEAP-style GA over sets of exactly `removal["k"]` removed blocks; and an export of the best Wanda genome and the
# best removal set as Hugging Face directories, reloaded and re-scored.
#
# Writes `search/<run>/{result.json,history.csv}`, `ga.json`, `methods_ga.json`, `tables/ga_genomes`,
# `tables/convergence` and `figures/<profile>/convergence.png`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
criterion = "magnitude"
test_windows = 1  # None: the whole test split (and the study protocol's 128 windows)
runs = {  # run name -> run_search arguments; "target" is the sparsity (seed mode: penalty below target - 0.05)
    "seed": {"mode": "seed", "target": 0.5, "fitness_split": "validation", "population": 4, "generations": 2,
             "fitness_windows": 1},
    "default": {"mode": "default", "target": 0.45, "population": 4, "generations": 2, "fitness_windows": 1},
}
seed = 0
dtype = "bfloat16"  # of the search's fitness evaluations
method_targets = [0.45, 0.5, 0.6, 0.7]
method_criteria = ["magnitude", "wanda"]
method_windows = 1
method_budget = {"population": 4, "generations": 2, "fitness_windows": 1}
removal = {"k": 2, "population": 4, "generations": 2, "fitness_windows": 1}
export_windows = 1

# %%
from IPython.display import Image, Markdown

from evoprune import experiments, plots, results
from evoprune.search import run_search

paths = results.report_paths(profile)
data_setting = results.resolve_data(data)
print(f"reports: {paths.reports}")

# %%
searches = {name: run_search(model, data_setting, out=paths.search(name), log=paths.measurements, **{
                 "criterion": criterion, "seed": seed, "test_windows": test_windows, "dtype": dtype, **run})
            for name, run in runs.items()}

# %% [markdown]
# ## Generalization: a second held-out text
# Each best genome against uniform at the same sparsity on Python standard-library docstrings, a text no fitness
# saw (float32, primary protocol, `test_windows` windows).

# %%
setup = experiments.load_setup(model, data_setting, criterion, log=paths.measurements)
held_out = [experiments.generalization(setup, result, name, test_windows) for name, result in searches.items()]
results.write_table(held_out, paths.table("generalization"))
Markdown(results.markdown_table(held_out))

# %%
ga = [experiments.ga_row(result, name) for name, result in searches.items()]
results.write_json(paths.record("ga"), {
    "rows": ga, "generalization": held_out,
    "provenance": results.provenance(notebook="03_ga_search", model=model, data=data_setting, criterion=criterion,
                                     seed=seed, runs=runs, search_dtype=dtype, test_windows=test_windows)})
Markdown(results.markdown_table(ga, ["run", "mode", "block_sparsity", "fitness", "fitness_split", "test_ppl",
                                     "seed_protocol_ppl", "evaluations", "forward_tokens", "wall_s"]))

# %% [markdown]
# ## Best genomes

# %%
genomes = experiments.genome_table(ga)
results.write_table(genomes, paths.table("ga_genomes"))
Markdown(results.markdown_table(genomes))

# %% [markdown]
# ## Convergence

# %%
histories = {mode: results.read_csv(paths.search(mode) / "history.csv") for mode in searches}
results.write_table([{"mode": mode, **row} for mode, rows in histories.items() for row in rows],
                    paths.table("convergence"))
Image(plots.save_figure(plots.convergence(histories), paths.figure("convergence")))

# %% [markdown]
# ## Beyond the study: the search at every target and criterion, and whole-block removal

# %%
method_ga = experiments.ga_sweep(model, data_setting, method_targets, method_criteria, method_budget,
                                 paths.search("methods"), method_windows, seed, paths.measurements)
Markdown(results.markdown_table(experiments.pivot(method_ga)))

# %%
removal_ga = experiments.removal_run(setup, out=paths.search("removal"), test_windows=method_windows, seed=seed,
                                     **removal)
Markdown(results.markdown_table([removal_ga["test"]]))

# %% [markdown]
# ## Export: the pruned models as Hugging Face directories, reloaded

# %%
best_wanda = min((r for r in method_ga if r["criterion"] == "wanda"), key=lambda r: r["target"])
experiments.use_criterion(setup, "wanda")
exports = [experiments.export_check(setup, experiments.export_dir(profile, "ga-wanda"), genome=best_wanda["genome"],
                                    n_windows=export_windows)]
experiments.use_criterion(setup, criterion)
exports.append(experiments.export_check(setup, experiments.export_dir(profile, "removal"),
                                        removed=removal_ga["removed"], n_windows=export_windows))
results.write_json(paths.record("methods_ga"), {
    "rows": method_ga, "removal_ga": removal_ga, "exports": exports,
    "provenance": results.provenance(notebook="03_ga_search", model=model, data=data_setting, seed=seed,
                                     targets=method_targets, criteria=method_criteria, budget=method_budget,
                                     removal=removal, test_windows=method_windows,
                                     dtype=experiments.METHOD_DTYPE)})
Markdown(results.markdown_table(exports))
