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
# # 01 · Baseline: the dense model and how much each block tolerates
#
# **The study.** A published student study pruned GPT-2 with a genetic algorithm (GA): one gene per decoder block,
# the fraction of that block's weights set to zero by magnitude, fitness the perplexity on WikiText-2; at 45%
# sparsity it reported a large gain over pruning every block alike (its numbers are read out below). Two flaws
# make that gain hard to trust: its fitness was computed on the same test windows it reported (the result is not
# held out), and its target was only a penalty below target - tolerance with no upper bound (its genome could
# prune more than the sparsity it is compared at). This study re-runs it with both fixed (fitness on the
# validation split, never test; an exact sparsity target), races a faster search against it, and asks whether a
# search beats the rules that need no search.
#
# **The four notebooks.** 01 (this one) measures the dense model and each block's sensitivity; 02 the
# allocations that need no search; 03 the searches, scored on test, against the rules and on a second text; 04
# draws the figures and the findings from the records.
#
# **Protocol.** Every reported perplexity is on the WikiText-2 *test* split in float32, under two protocols:
# *primary*, non-overlapping 1024-token windows (the first `test_windows`); and *study*, the published study's
# own windows (1024 tokens every 512, drawn with `random.seed(365)`, the first `study_windows`). Searches and
# the sensitivity scan only ever see the *validation* split.
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
from IPython.display import Image, Markdown, display

from evoprune import experiments, hardware, models, plots, readings, records

paths = records.report_paths(profile)
session = experiments.open_session(model, data, paths)
study = records.study_published()
display(Markdown(readings.published_study(study)))

# %% [markdown]
# ## Step 1: dense perplexity under both protocols
# The unpruned model on the test split, float32. Every later perplexity is a multiple of these.

# %%
dense = session.reported(0.0, windows=test_windows, study_windows=study_windows)
dense_rows = [{"protocol": "primary", "windows": dense["test_windows"], "ppl": dense["test_ppl"]},
              {"protocol": "study", "windows": dense["study_windows"], "ppl": dense["study_ppl"]}]
display(Markdown(records.markdown_table(dense_rows)))
display(Markdown(readings.dense(dense, study)))

# %% [markdown]
# ## Step 2: what a pruning rate applies to
# A rate is the fraction of a block's *prunable* weights (its attention and MLP matrices) set to zero;
# block sparsity is the share of zeros among all blocks' prunable weights.

# %%
counts = models.parameter_counts(session.model)
display(Markdown(records.markdown_table([counts])))
display(Markdown(readings.parameters(counts)))

# %% [markdown]
# ## Step 3: per-block sensitivity
# One block at a time pruned to `sensitivity_rate` by magnitude, every other block dense, scored on the first
# `sensitivity_windows` *validation* windows in `dtype`. The ranking it gives is a rule that needs no search,
# and one of the starting points of the race in 03.

# %%
scan_dtype = hardware.resolve_dtype(dtype)
sensitivity = experiments.sensitivity_scan(session, "magnitude", sensitivity_rate, sensitivity_windows, scan_dtype)
display(Image(plots.save_figure(plots.sensitivity(sensitivity, model), paths.figure("sensitivity"))))
display(Markdown(readings.sensitivity(sensitivity)))

# %% [markdown]
# ## Record
# The tables and `baseline.json` (with provenance: model weights hash, data hashes, commit, settings), which
# notebooks 02-04 read.

# %%
records.write_table([counts], paths.table("parameter_counts"))
records.write_table(dense_rows, paths.table("dense"))
records.write_table(sensitivity, paths.table("sensitivity"))
baseline = experiments.record(
    paths, "baseline", "01_baseline", session,
    {"model": session.name, "weights_hash": session.loaded.weights_hash, "parameter_counts": counts, "dense": dense,
     "dense_rows": dense_rows, "sensitivity": sensitivity, "data": session.data_provenance()},
    test_windows=test_windows, study_windows=study_windows, sensitivity_rate=sensitivity_rate,
    sensitivity_windows=sensitivity_windows, sensitivity_dtype=scan_dtype, dtype_decision=hardware.dtype_decision(),
    reported_dtype=records.REPORTED_DTYPE)
experiments.finish(paths, "01_baseline", session)
