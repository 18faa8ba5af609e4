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
# # 02 · What pruning costs without a search
# Before any search: how bad is pruning every block alike (the study's "cliff")? These are the numbers a search
# must beat to be worth its cost (03 sets each search against the allocations that need no search at its target;
# notebook 05 compares criteria and allocations at the sparsities people use).
#
# 1. **The uniform sweep**: every block pruned to the same rate, 0% to `sweep_max` in steps of `sweep_step`;
#    test perplexity under both protocols, float32 (the study's published curve beside it).
# 2. **Beyond the study: whole blocks removed**, one at a time (and every pair for models of <= 12 blocks), in
#    `dtype` on the first `removal_windows` test windows; latency in float32.
#
# Reads `baseline.json` (01). Writes `uniform_sweep.json`, `block_removal.json`,
# `tables/{uniform_sweep,block_removal}` and `figures/<profile>/uniform_sweep.png`.

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
removal_windows = 1  # first test windows of the block-removal numbers

# %%
from IPython.display import Image, Markdown, display

from evoprune import experiments, hardware, plots, readings, records

paths = records.report_paths(profile)
session = experiments.open_session(model, data, paths)
study = records.study_published()

# %% [markdown]
# ## Step 1: the uniform sweep
# Each point is the same rate in every block, test split, both protocols, float32.

# %%
sparsities = experiments.sweep_points(sweep_max, sweep_step)
sweep = []
for s in sparsities:
    measured = session.reported(s, criterion, test_windows, study_windows=study_windows)
    sweep.append({"sparsity": s, "criterion": criterion, **{k: v for k, v in measured.items() if k != "genome"}})
session.restore()
display(Image(plots.save_figure(plots.uniform_curve(sweep, model), paths.figure("uniform_sweep"))))
display(Markdown(readings.uniform_sweep(sweep, study)))

# %%
records.write_table(sweep, paths.table("uniform_sweep"))
experiments.record(paths, "uniform_sweep", "02_uniform_sweep", session, {"rows": sweep}, criterion=criterion,
                   test_windows=test_windows, study_windows=study_windows, sparsities=sparsities,
                   reported_dtype=records.REPORTED_DTYPE);

# %% [markdown]
# ## Step 2 (beyond the study): whole blocks removed
# Zeroed weights keep a model's size and speed; a removed block saves both. The perplexity cost of each block
# removed, and the latency of the model without the best one(s).

# %%
dtype = hardware.resolve_dtype(dtype)
removals = experiments.block_removals(session, removal_windows, dtype)
display(Markdown(records.markdown_table(removals["depths"])))
display(Markdown(readings.block_removal(removals)))

# %% [markdown]
# ## Record

# %%
records.write_table(removals["single"] + (removals["pairs"] or []), paths.table("block_removal"))
experiments.record(paths, "block_removal", "02_uniform_sweep", session, removals, removal_windows=removal_windows,
                   dtype=dtype, dtype_decision=hardware.dtype_decision())
experiments.finish(paths, "02_uniform_sweep", session)
