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
# # 02 · Sweeps that need no search
# 1. Every block pruned to the same rate, 0% to `sweep_max` in steps of `sweep_step`; test perplexity under both
#    protocols (float32). This is the study's "cliff" curve.
# 2. Beyond the study: at each of `method_targets`, for each of `method_criteria` (magnitude, Wanda), the
#    allocations that need no search: uniform, OWL, sensitivity-ranked (from 01's scan) and one global magnitude
#    threshold; then whole blocks physically removed, one at a time (and every pair for models of <= 12 blocks).
#    Measured like the references of issue 6: bfloat16, the first `method_windows` test windows, primary protocol.
#
# Writes `uniform_sweep.json`, `allocations.json`, `tables/{uniform_sweep,allocations,block_removal}` and
# `figures/<profile>/uniform_sweep.png`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
criterion = "magnitude"
test_windows = 1  # None: the whole test split (and the study protocol's 128 windows)
sweep_max = 0.6
sweep_step = 0.05
method_targets = [0.45, 0.5, 0.6, 0.7]
method_criteria = ["magnitude", "wanda"]
method_windows = 1  # first test windows of the allocation and block-removal numbers

# %%
from IPython.display import Image, Markdown

from evoprune import experiments, plots, results

paths = results.report_paths(profile)
setup = experiments.load_setup(model, results.resolve_data(data), criterion, log=paths.measurements)
sparsities = experiments.sweep_points(sweep_max, sweep_step)
print(f"reports: {paths.reports}\nsparsities: {sparsities}")

# %%
sweep = experiments.uniform_sweep(setup, sparsities, test_windows)
results.write_table(sweep, paths.table("uniform_sweep"))
results.write_json(paths.record("uniform_sweep"), {
    "rows": sweep, "provenance": results.provenance(notebook="02_uniform_sweep", model=model,
                                                    weights=setup.loaded.weights_hash, criterion=criterion,
                                                    test_windows=test_windows, sparsities=sparsities,
                                                    reported_dtype=experiments.REPORTED_DTYPE)})
Image(plots.save_figure(plots.uniform_curve(sweep, model), paths.figure("uniform_sweep")))

# %% [markdown]
# ## Allocations that need no search, per criterion

# %%
baseline = results.read_json(paths.require(paths.record("baseline"), "01_baseline"))
sensitivity = [row["ppl"] for row in baseline["sensitivity"]]
allocations = experiments.allocation_sweep(setup, method_targets, method_criteria, sensitivity, method_windows)
results.write_table(allocations, paths.table("allocations"))
Markdown(results.markdown_table(experiments.pivot(allocations)))

# %% [markdown]
# ## Whole blocks removed

# %%
removals = experiments.block_removals(setup, method_windows)
results.write_table(removals["single"] + (removals["pairs"] or []), paths.table("block_removal"))
results.write_json(paths.record("allocations"), {
    "rows": allocations, "block_removal": removals,
    "provenance": results.provenance(notebook="02_uniform_sweep", model=model, weights=setup.loaded.weights_hash,
                                     targets=method_targets, criteria=method_criteria, test_windows=method_windows,
                                     dtype=experiments.METHOD_DTYPE)})
Markdown(results.markdown_table(removals["depths"]))
