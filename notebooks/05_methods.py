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
# # 05 · The study at the sparsities people use: criteria x allocations x targets
# 01–04 answer the published study: at 45% a search beats every rule for *magnitude* pruning. Magnitude is the
# criterion nobody uses at these sparsities. This notebook asks the field's question: does a search still pay on
# the criteria people use, and where?
#
# - **Criteria**: magnitude; *Wanda* (|W| x the input feature's norm, compared within each output row); *SparseGPT*
#   (each matrix reconstructed by optimal-brain-surgeon updates of its surviving weights, from a level database:
#   every matrix at every level of the grid 0, 10, ..., 90%).
# - **Allocations that need no search**: uniform; *OWL* (more sparsity where a block has fewer outlier
#   activations); *AlphaPruning* (more sparsity where a block's weight spectra are heavy-tailed; its epsilon chosen
#   on validation); the *sensitivity ranking* (01's scan). One rate per block, on SparseGPT's grid for SparseGPT.
# - **The race** (EvoPress-style (1 + lambda), fresh validation samples, from the best of those rules): one search
#   per seed of `race_seeds`, all at the token budget of `race`.
#
# Every cell is measured alike: float32, primary protocol, the first `test_windows` test windows and the first
# `docs_windows` windows of `python-docs` (a text no fitness saw), at its measured block sparsity.
#
# Reads `baseline.json` (01: the sensitivity scan). Writes `methods.json`, `search/methods/<criterion>-<target%>-s<seed>/`,
# `tables/{methods_cells,methods,methods_claims,methods_downstream}` and
# `figures/<profile>/{frontier,allocations_heatmap}.png`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
cells = {"magnitude": [0.5], "wanda": [0.5], "sparsegpt": [0.5, 0.7]}  # criterion -> targets
race = {"strategy": "race", "offspring": 2, "generations": 1, "stages": 1, "promote": 1}  # search settings
race_seeds = {"magnitude": [], "wanda": [0], "sparsegpt": [0, 1]}  # criterion -> seeds
test_windows = 1  # first test windows of every cell (float32, primary protocol)
docs_windows = 1  # first python-docs windows of every cell
dtype = "auto"  # of the races' fitness and AlphaPruning's epsilon choice (auto: bfloat16 where measured fast)
downstream_tasks = []  # lm-evaluation-harness tasks (offline: wikitext_lastword); [] skips them
downstream_limit = None  # items per task (None: all)
downstream_targets = [0.5, 0.7]  # dense, and per criterion the best rule and the race's first seed at these
with_profiles = []  # profiles whose 05 cells are shown beside these (same model and windows; read, not re-run)

# %%
from IPython.display import Image, Markdown, display

from evoprune import experiments, hardware, methods, plots, readings, records

paths = records.report_paths(profile)
session = experiments.open_session(model, data, paths)
sensitivity = experiments.sensitivity_ppl(paths)
fitness_dtype = hardware.resolve_dtype(dtype)

# %% [markdown]
# ## Step 1: the rules
# Dense, then every allocation that needs no search at each criterion's targets, each at exactly the target's
# block sparsity (SparseGPT: the rule snapped to the grid with its weighted mean at the target).

# %%
rows = [methods.dense_row(session, test_windows, docs_windows)]
others = methods.other_profiles_rows(with_profiles, rows)  # checked first: refused unless same model and windows
for criterion, targets in cells.items():
    for target in targets:
        rows += methods.rule_cells(session, criterion, target, sensitivity, test_windows, docs_windows, fitness_dtype)
display(Markdown(records.markdown_table(methods.table(rows))))

# %% [markdown]
# ## Step 2: the races
# One race per seed at each criterion's targets, from the best of the rules above (scored on fresh validation
# samples, never on test). A finished race is read back; an interrupted one resumes from its checkpoint.

# %%
for criterion, targets in cells.items():
    for target in targets:
        rows += methods.race_cells(session, paths, criterion, target, race, race_seeds[criterion], sensitivity,
                                   test_windows, docs_windows, fitness_dtype)
shown = rows + others  # this profile's cells, then the other profiles'
table = methods.table(shown)
display(Markdown(records.markdown_table(table)))
display(Markdown(readings.methods_table(table)))

# %% [markdown]
# ## Step 3: the targets, as measured
# The race's mean over its seeds against the best rule of the same criterion and target, on test and on
# python-docs (at most 0.92 at 50%, 0.8 at 60%, 0.6 at 70%), and the best model at 50% and 70% against dense (at
# most 1.6x and 5x).

# %%
claims = methods.claims(shown)
display(Markdown(records.markdown_table(claims) if claims else "no bounded target with two or more seeds here"))
display(Markdown(readings.claims(claims)))

# %% [markdown]
# ## Step 4: the frontier
# Test perplexity against the block sparsity each model has, per criterion: its best rule at each target and its
# race (the seeds' mean, their range as a band).

# %%
dense = rows[0]
display(Image(plots.save_figure(plots.frontier(methods.frontier(shown), dense["test_ppl"], session.name),
                                paths.figure("frontier"))))
display(Markdown(readings.frontier(methods.frontier(shown), dense["test_ppl"])))

# %% [markdown]
# ## Step 5: where each criterion prunes
# Each race seed beside the best rule, per criterion and target; attention and MLP apart. Seeds that agree show
# the same pattern in their rows.

# %%
display(Image(plots.save_figure(plots.allocation_heatmap(methods.heatmap_rows(shown)),
                                paths.figure("allocations_heatmap"))))
display(Markdown(readings.seed_agreement(methods.seed_agreement(shown))))

# %% [markdown]
# ## Step 6: downstream accuracy beside perplexity
# The local task(s) for dense and, per criterion at `downstream_targets`, the best rule and the race's first seed.

# %%
accuracy = methods.downstream(session, rows, downstream_tasks, downstream_limit, downstream_targets)
display(Markdown(records.markdown_table(accuracy) if accuracy else "no downstream tasks in this profile"))

# %% [markdown]
# ## Record

# %%
records.write_table([{k: v for k, v in r.items() if k not in ("genome", "attention", "mlp")} for r in rows],
                    paths.table("methods_cells"))
for name, written in (("methods", table), ("methods_claims", claims), ("methods_downstream", accuracy)):
    if written:
        records.write_table(written, paths.table(name))
experiments.record(paths, "methods", "05_methods", session,
                   {"rows": rows, "table": table, "claims": claims, "downstream": accuracy},
                   cells=cells, with_profiles=with_profiles, race=race, race_seeds=race_seeds, test_windows=test_windows,
                   docs_windows=docs_windows, fitness_dtype=fitness_dtype, reported_dtype=records.REPORTED_DTYPE,
                   dtype_decision=hardware.dtype_decision(), downstream_tasks=downstream_tasks,
                   downstream_limit=downstream_limit)
experiments.finish(paths, "05_methods", session)
