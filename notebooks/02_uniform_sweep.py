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
# Before any search: how bad is pruning every block alike (the study's "cliff"), and how much of the gap do the
# allocations that need no search close? These are the numbers a search must beat to be worth its cost.
#
# 1. **The uniform sweep**: every block pruned to the same rate, 0% to `sweep_max` in steps of `sweep_step`;
#    test perplexity under both protocols, float32 (the study's published curve beside it).
# 2. **Beyond the study: the rules**, at each of `method_targets` and for each of `method_criteria` (magnitude;
#    Wanda, which scales each weight by its input's activation norm): *uniform*; *OWL* (more sparsity where a
#    block has fewer outlier activations); the *sensitivity ranking* (from 01's scan); and one *global* magnitude
#    threshold (magnitude only). Measured in `method_dtype` on the first `method_windows` test windows, primary
#    protocol.
# 3. **Beyond the study: whole blocks removed**, one at a time (and every pair for models of <= 12 blocks), in
#    `dtype` on the first `removal_windows` test windows; latency in float32.
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
from IPython.display import Image, Markdown, display

from evoprune import experiments, hardware, plots, readings, records, stats

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
# ## Step 2 (beyond the study): the rules, per criterion and target
# Every allocation here has exactly the target's block sparsity (the global threshold: one cut over all
# blocks' weights). Dense is measured on the same windows and dtype, so every cell reads as a multiple of it.

# %%
dtype, method_dtype = hardware.resolve_dtype(dtype), hardware.resolve_dtype(method_dtype)
allocations = experiments.allocation_sweep(session, method_targets, method_criteria,
                                           experiments.sensitivity_ppl(paths), method_windows, method_dtype)
session.restore()
dense = session.measure(session.pruner("magnitude", 1, method_dtype), "primary", method_windows, method_dtype)
display(Markdown(records.markdown_table(stats.pivot(allocations))))
display(Markdown(readings.allocations(allocations, dense.ppl)))

# %% [markdown]
# ## Step 3 (beyond the study): whole blocks removed
# Zeroed weights keep a model's size and speed; a removed block saves both. The perplexity cost of each block
# removed, and the latency of the model without the best one(s).

# %%
removals = experiments.block_removals(session, removal_windows or method_windows, dtype)
display(Markdown(records.markdown_table(removals["depths"])))
display(Markdown(readings.block_removal(removals)))

# %% [markdown]
# ## Record

# %%
records.write_table(allocations, paths.table("allocations"))
records.write_table(removals["single"] + (removals["pairs"] or []), paths.table("block_removal"))
experiments.record(paths, "allocations", "02_uniform_sweep", session,
                   {"rows": allocations, "dense_ppl": dense.ppl, "block_removal": removals},
                   targets=method_targets, criteria=method_criteria, test_windows=method_windows, dtype=method_dtype,
                   removal_dtype=dtype, removal_windows=removals["test_windows"],
                   dtype_decision=hardware.dtype_decision())
experiments.finish(paths, "02_uniform_sweep", session)
