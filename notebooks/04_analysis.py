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
# # 04 · Analysis: what the study found
# Reads the records of notebooks 01–03 from `reports/<profile>/` (no model runs unless `interactive`) and puts
# the study together: the protocol every number was measured under; Figure 1 (uniform pruning, the searches and
# the study's published points); Figure 2 (where the searches prune); Figure 3 (whole blocks removed); the
# results table in the study's format; the targets set for the study, as measured; then `summary.json` and
# `REPORT.md`. The criteria and allocations at the sparsities people use are notebook 05's.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
interactive = False  # show the pruning panel (loads the model)
panel_windows = 2  # calibration windows the panel scores on every change
panel_seq_len = 256
panel_genes = "block"  # one slider per block, "group": attention and MLP sliders, or "matrix": one per matrix
dtype = "auto"  # of the panel's live perplexity (auto: bfloat16 where measured fast)

# %%
from IPython.display import Image, Markdown, display

from evoprune import plots, readings, records, report, stats

paths = records.report_paths(profile)
loaded = report.load_records(paths)
summary = report.build_summary(paths, loaded)
study = records.study_published()
print(f"reports: {paths.reports}")

# %% [markdown]
# ## The protocol
# What every number below was measured on: the splits, the windows, the dtypes, and where each search's fitness
# came from.

# %%
display(Markdown(readings.protocol(summary)))

# %% [markdown]
# ## Figure 1: perplexity against sparsity
# Uniform pruning under both protocols, each search's result (a search over several seeds: its mean and range),
# and the study's published GPT-2 points (its protocol, its GA scored on the windows it optimized on).

# %%
display(Image(plots.save_figure(plots.figure1(summary["uniform"], stats.seed_groups(summary["ga"]), study,
                                              summary["model"]), paths.figure("figure1"))))
display(Markdown(readings.headline(summary, study)))

# %% [markdown]
# ## Figure 2: where the searches prune
# Each search's best rates per block (a search over several seeds: their mean and range; attention and MLP apart
# when the genes are per group), against the target and the study's own GA genome when the block counts match.

# %%
n_genes = len(summary["ga"][0]["genome"])
display(Image(plots.save_figure(
    plots.layer_profile(stats.layer_profiles(summary), summary["ga"][0]["min_sparsity"],
                        study["ga"]["genome"] if n_genes == len(study["ga"]["genome"]) else None),
    paths.figure("figure2_layer_profile"))))
display(Markdown(readings.profiles(summary)))

# %% [markdown]
# ## Figure 3 (beyond the study): whole blocks removed
# Zeroed weights keep a model's size and speed; a removed block saves both. Perplexity against the share of
# blocks gone: every single block (02), the best set of each depth, and the removal GA's set (03).

# %%
removal = summary["removal"]
display(Image(plots.save_figure(plots.block_removal(removal["single"], removal["points"], removal["dense_ppl"],
                                                    removal["dense_blocks"], summary["model"]),
                                paths.figure("figure3_block_removal"))))
display(Markdown(records.markdown_table(report.removal_table(summary))))
display(Markdown(readings.removal(summary)))

# %% [markdown]
# ## The results table
# In the study's format (Method | Target sparsity | Perplexity | Status), with both protocols. Status: up to
# 1.5x dense "near dense", up to 4x "degraded", above "collapsed".

# %%
table = report.results_table(summary)
records.write_table(table, paths.table("results"))
Markdown(records.markdown_table(table))

# %% [markdown]
# ## The targets set for the study, as measured
# The main search (mean over its seeds) against uniform and the best rule at its target, on test and on the
# second held-out text; and how much of its gain on the fitness split held on test.

# %%
display(Markdown(records.markdown_table(summary["claims"]) if summary["claims"] else "no targets in this profile"))
display(Markdown(readings.claims(summary["claims"])))

# %% [markdown]
# ## Findings

# %%
display(Markdown(readings.findings(summary, study)))

# %%
records.write_json(paths.summary, summary)
records.write_text(paths.report_md, report.render_report(paths, summary))
print(f"wrote {paths.summary} and {paths.report_md}")

# %% [markdown]
# ## Interactive panel
# Drag the sliders, pick a preset, rescale to the target, export the genome for
# `python -m evoprune eval --rates reports/<profile>/panel_genome.json`.

# %%
if interactive:
    from evoprune.widgets import open_panel
    panel = open_panel(model, data, paths, summary["ga"][0]["min_sparsity"], panel_windows, panel_seq_len, dtype,
                       genes=panel_genes)
    display(panel.widget)
