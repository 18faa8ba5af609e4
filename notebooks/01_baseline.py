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
# # 01 · Baseline
# Dense test perplexity under both protocols (float32), parameter counts, and a per-block sensitivity scan: one
# block at a time pruned to `sensitivity_rate`, scored on a few validation windows.
#
# Writes `reports/<profile>/baseline.json`, `tables/parameter_counts`, `tables/dense`, `tables/sensitivity`
# and `figures/<profile>/sensitivity.png`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
test_windows = 1  # None: the whole test split (and the study protocol's 128 windows)
sensitivity_rate = 0.5
sensitivity_windows = 1
dtype = "bfloat16"  # of the sensitivity scan only; reported test numbers are float32

# %%
from IPython.display import Image, Markdown

from evoprune import experiments, models, plots, results

paths = results.report_paths(profile)
setup = experiments.load_setup(model, results.resolve_data(data), log=paths.measurements)
print(f"reports: {paths.reports}\nfigures: {paths.figures}")

# %% [markdown]
# ## Dense perplexity and parameter counts

# %%
dense = experiments.reported_perplexities(setup, 0.0, test_windows)
counts = models.parameter_counts(setup.model)
results.write_table([counts], paths.table("parameter_counts"))
dense_rows = [{"protocol": "primary", "windows": dense["test_windows"], "ppl": dense["test_ppl"]},
              {"protocol": "study", "windows": dense["seed_protocol_windows"], "ppl": dense["seed_protocol_ppl"]}]
results.write_table(dense_rows, paths.table("dense"))
Markdown(results.markdown_table([counts]) + "\n" + results.markdown_table(dense_rows))

# %% [markdown]
# ## Per-block sensitivity

# %%
sensitivity = experiments.sensitivity_scan(setup, sensitivity_rate, sensitivity_windows, dtype)
results.write_table(sensitivity, paths.table("sensitivity"))
Image(plots.save_figure(plots.sensitivity(sensitivity, model), paths.figure("sensitivity")))

# %%
results.write_json(paths.record("baseline"), {
    "model": model, "weights_hash": setup.loaded.weights_hash, "parameter_counts": counts, "dense": dense,
    "sensitivity": sensitivity, "data": experiments.data_provenance(setup),
    "provenance": results.provenance(notebook="01_baseline", model=model, test_windows=test_windows,
                                     sensitivity_rate=sensitivity_rate, sensitivity_windows=sensitivity_windows,
                                     sensitivity_dtype=dtype, reported_dtype=experiments.REPORTED_DTYPE)})
