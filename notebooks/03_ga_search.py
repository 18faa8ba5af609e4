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
# Writes `search/<run>/{result.json,history.csv}`, `ga.json`, `tables/ga_genomes`, `tables/convergence` and
# `figures/<profile>/convergence.png`.

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

# %%
from IPython.display import Image, Markdown

from evoprune import experiments, plots, results
from evoprune.search import run_search

paths = results.report_paths(profile)
data_setting = results.resolve_data(data)
print(f"reports: {paths.reports}")

# %%
searches = {name: run_search(model, data_setting, out=paths.search(name), criterion=criterion, seed=seed,
                             test_windows=test_windows, dtype=dtype, **run)
            for name, run in runs.items()}

# %% [markdown]
# ## Generalization: a second held-out text
# Each best genome against uniform at the same sparsity on Python standard-library docstrings, a text no fitness
# saw (float32, primary protocol, `test_windows` windows).

# %%
setup = experiments.load_setup(model, data_setting, criterion)
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
