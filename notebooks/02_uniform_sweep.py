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
# # 02 · Uniform sweep
# Every block pruned to the same rate, 0% to `sweep_max` in steps of `sweep_step`; test perplexity under both
# protocols (float32). This is the study's "cliff" curve.
#
# Writes `reports/<profile>/uniform_sweep.json`, `tables/uniform_sweep` and `figures/<profile>/uniform_sweep.png`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
criterion = "magnitude"
test_windows = 1  # None: the whole test split (and the study protocol's 128 windows)
sweep_max = 0.6
sweep_step = 0.05

# %%
from IPython.display import Image

from evoprune import experiments, plots, results

paths = results.report_paths(profile)
setup = experiments.load_setup(model, results.resolve_data(data), criterion)
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
