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
# block at a time pruned to `sensitivity_rate`, scored on a few validation windows in `dtype`.
#
# Writes `reports/<profile>/baseline.json`, `tables/parameter_counts`, `tables/dense`, `tables/sensitivity`
# and `figures/<profile>/sensitivity.png`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
test_windows = 1  # None: the whole test split (and the study protocol's 128 windows)
study_windows = None  # study-protocol windows (None: as test_windows)
sensitivity_rate = 0.5
sensitivity_windows = 1
dtype = "auto"  # of the sensitivity scan only (auto: bfloat16 where measured fast); reported numbers are float32

# %%
from IPython.display import Image, Markdown

from evoprune import experiments, plots, records

paths = records.report_paths(profile)
session = experiments.open_session(model, data, paths)

# %% [markdown]
# ## Dense perplexity, parameter counts and per-block sensitivity

# %%
baseline = experiments.baseline(session, paths, test_windows, sensitivity_rate, sensitivity_windows, dtype,
                               study_windows)
Markdown(records.markdown_table([baseline["parameter_counts"]]) + "\n" + records.markdown_table(baseline["dense_rows"]))

# %%
Image(plots.save_figure(plots.sensitivity(baseline["sensitivity"], model), paths.figure("sensitivity")))

# %%
experiments.finish(paths, "01_baseline", session)
