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
#    Allocations measured in `method_dtype` on the first `method_windows` test windows, block removal in `dtype`
#    on the first `removal_windows`; primary protocol.
#
# Reads `baseline.json` (01). Writes `uniform_sweep.json`, `allocations.json`,
# `tables/{uniform_sweep,allocations,block_removal}` and `figures/<profile>/uniform_sweep.png`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
criterion = "magnitude"
test_windows = 1  # None: the whole test split (and the study protocol's 128 windows)
study_windows = None  # study-protocol windows (None: as test_windows)
sweep_max = 0.6
sweep_step = 0.05
dtype = "auto"  # of the whole-block removal numbers (auto: bfloat16 where measured fast)
method_dtype = "float32"  # of the allocation numbers
method_targets = [0.45, 0.5, 0.6, 0.7]
method_criteria = ["magnitude", "wanda"]
method_windows = 1  # first test windows of the allocation numbers
removal_windows = 1  # first test windows of the block-removal numbers

# %%
from IPython.display import Image, Markdown

from evoprune import experiments, plots, report, records

paths = records.report_paths(profile)
session = experiments.open_session(model, data, paths)

# %%
sweep = experiments.uniform_sweep(session, paths, criterion, test_windows, sweep_max, sweep_step, study_windows)
Image(plots.save_figure(plots.uniform_curve(sweep, model), paths.figure("uniform_sweep")))

# %% [markdown]
# ## Allocations that need no search, per criterion, and whole blocks removed

# %%
methods = experiments.methods_without_search(session, paths, method_targets, method_criteria, method_windows, dtype,
                                             method_dtype, removal_windows)
Markdown(records.markdown_table(report.pivot(methods["rows"])) + "\n"
         + records.markdown_table(methods["block_removal"]["depths"]))

# %%
experiments.finish(paths, "02_uniform_sweep", session)
