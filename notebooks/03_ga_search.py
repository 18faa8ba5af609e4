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
# # 03 · GA search
# The evolutionary layer-wise search, once per entry of `runs`: the published GA (`published` strategy: penalty
# below target - tolerance, one-gene mutations, elites re-scored) and this project's optimizers (`elitist`: exact
# target, fitness on validation, cached, multi-fidelity; `race`: (1 + lambda) from the best of uniform, OWL and
# the sensitivity ranking, children raced on fresh validation samples). Each run has its own budget. A finished
# search in `reports/<profile>/search/<run>/` is read back, not recomputed; an interrupted one resumes from its
# checkpoint. Each best genome's test perplexity is measured under both protocols in float32 on `test_windows`
# windows, as notebooks 01 and 02 measure, and on a second held-out text.
#
# Beyond the study: a search at every target and criterion of 02's allocation sweep, all with one smaller budget
# and strategy (`method_budget`; settings for one criterion under its name), measured like the allocations
# (`method_dtype`, `method_windows` test windows); the DEAP-style GA over sets of exactly `removal["k"]` removed
# blocks; and an export of the best Wanda genome and the best removal set as Hugging Face directories, reloaded
# and re-scored.
#
# Reads `baseline.json` (01: its sensitivity scan, one of the rules a race starts from). Writes
# `search/<run>/{result.json,history.csv}`, `ga.json`, `methods_ga.json`,
# `tables/{ga_genomes,convergence,generalization}` and `figures/<profile>/convergence.png`.

# %% tags=["parameters"]
profile = "smoke"
model = "tiny-gpt2"
data = None  # a directory (relative to the repository root), "wikitext2" (hub), or None for $EVOPRUNE_DATA_DIR
criterion = "magnitude"
test_windows = 1  # None: the whole test split (and the study protocol's 128 windows)
study_windows = None  # study-protocol windows (None: as test_windows)
docs_windows = None  # windows of the second held-out text, python-docs (None: as test_windows)
runs = {  # run name -> search settings (evoprune.search.Settings); published: penalty below target - tolerance
    "published": {"strategy": "published", "target": 0.5, "fitness_split": "validation", "population": 4,
                  "generations": 2, "fitness_windows": 1},
    "elitist": {"strategy": "elitist", "target": 0.45, "population": 4, "generations": 2, "fitness_windows": 1},
}
seed = 0
dtype = "auto"  # of the searches' fitness and the removal GA (auto: bfloat16 where measured fast)
method_dtype = "float32"  # of the methods table's test numbers
method_targets = [0.45, 0.5, 0.6, 0.7]
method_criteria = ["magnitude", "wanda"]
method_windows = 1
removal_windows = 1
method_budget = {"population": 4, "generations": 2, "fitness_windows": 1}
removal = {"k": 2, "population": 4, "generations": 2, "fitness_windows": 1}
export_windows = 1
downstream_tasks = []  # lm-evaluation-harness tasks (offline: wikitext_lastword); [] skips them
downstream_limit = None  # items per task (None: all)
downstream_target = 0.45  # dense, uniform and the GA runs at this target (magnitude; Wanda from the methods sweep)

# %%
from IPython.display import Image, Markdown

from evoprune import experiments, plots, records, report, stats

paths = records.report_paths(profile)
session = experiments.open_session(model, data, paths)

# %%
ga = experiments.ga_runs(session, paths, runs, criterion, seed, test_windows, dtype, study_windows, docs_windows)
Markdown(records.markdown_table(ga["rows"], ["run", "strategy", "block_sparsity", "fitness", "fitness_split", "test_ppl",
                                     "study_ppl", "evaluations", "forward_tokens", "wall_s"]))

# %% [markdown]
# ## Convergence and generalization to a second held-out text (`python-docs`, float32, primary protocol)

# %%
Image(plots.save_figure(plots.convergence(report.histories(paths, runs), report.race_progress(paths, ga["rows"]),
                                          stats.run_groups(ga["rows"])), paths.figure("convergence")))

# %%
Markdown(records.markdown_table(ga["generalization"]))

# %% [markdown]
# ## Beyond the study: the search at every target and criterion, whole-block removal, export

# %%
methods = experiments.methods_with_search(session, paths, method_targets, method_criteria, method_budget, removal,
                                          method_windows, export_windows, seed, dtype, method_dtype, removal_windows)
Markdown(records.markdown_table(report.pivot(methods["rows"])) + "\n" + records.markdown_table(methods["exports"]))

# %% [markdown]
# ## Downstream accuracy (lm-evaluation-harness) beside test perplexity

# %%
rows = experiments.downstream_study(session, paths, downstream_tasks, downstream_limit, downstream_target, ga,
                                    methods, test_windows, method_windows)
Markdown(records.markdown_table(rows) if rows else "no downstream tasks in this profile")

# %%
experiments.finish(paths, "03_ga_search", session)
