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
# # 04 · Analysis
# Reads the records of notebooks 01–03 from `reports/<profile>/` (no model runs unless `interactive`) and writes
# Figure 1 (uniform curve, GA results, the study's published points), Figure 2 (layer-wise profiles), Figure 3
# (criteria x allocations and block removal), the results table in the study's format, `summary.json` and
# `REPORT.md`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
interactive = False  # show the pruning panel (loads the model)
panel_windows = 2  # calibration windows the panel scores on every change
panel_seq_len = 256
panel_genes = "block"  # one slider per block, or "group": attention and MLP sliders, the genes of the searches
dtype = "auto"  # of the panel's live perplexity (auto: bfloat16 where measured fast)

# %%
from IPython.display import Image, Markdown, display

from evoprune import plots, records, report, stats

paths = records.report_paths(profile)
loaded = report.load_records(paths)
summary = report.build_summary(paths, loaded)
study = records.study_published()
print(f"reports: {paths.reports}")

# %% [markdown]
# ## Figure 1: perplexity against sparsity

# %%
Image(plots.save_figure(plots.figure1(summary["uniform"], stats.seed_groups(summary["ga"]), study, summary["model"]),
                        paths.figure("figure1")))

# %% [markdown]
# ## Figure 2: layer-wise pruning profiles (a search over several seeds: their mean and range)

# %%
n_genes = len(summary["ga"][0]["genome"])
Image(plots.save_figure(
    plots.layer_profile(stats.layer_profiles(summary), summary["ga"][0]["min_sparsity"],
                        study["ga"]["genome"] if n_genes == len(study["ga"]["genome"]) else None),
    paths.figure("figure2_layer_profile")))

# %% [markdown]
# ## Figure 3: criteria, allocations and block removal (beyond the study)

# %%
methods = summary["methods"]
Image(plots.save_figure(plots.methods(methods["rows"], methods["removal_points"], methods["dense_ppl"],
                                      summary["model"]), paths.figure("figure3_methods")))

# %%
Markdown(records.markdown_table(report.methods_table(summary)) + "\n" + report.wanda_targets(summary) + "\n\n"
         + records.markdown_table(report.removal_table(summary)))

# %% [markdown]
# ## Results table

# %%
table = report.results_table(summary)
records.write_table(table, paths.table("results"))
Markdown(records.markdown_table(table))

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
