"""How far the race gets with each step rule, judged on text no search's ranking used: the offline profile's race
(by default at 45% magnitude and seed 0; 16 children, stages of 1, 2 and 4 fresh validation windows of 512
tokens, from the best of uniform, OWL and the sensitivity ranking) at growing token budgets, its parent judged by
perplexity on 32 fixed validation windows of 512 tokens (a draw that no search of seed 0-2 makes) and on the
first 16 windows of ``python-docs`` (1024 tokens), in the dtype ``auto`` chooses; the rules judged the same way.
Never the test split.

Needs 01's sensitivity scan (``reports/offline/baseline.json``). Usage: python bench/race_step.py [RULE:STEP ...]
[--criterion C] [--target T] [--genes block,group,matrix] [--budgets N,N] [--seeds N,N] [--name NAME] (default:
fixed:0.025 fixed:0.05 adaptive:0.05 at 45% magnitude, one rate per block, 130k and 260k tokens, seed 0; ``group``:
an attention and an MLP rate per block, ``matrix``: one per matrix, the rules' block rates given to each; several
layouts, comma-separated, each race its own layout at the same tokens, a rule that prunes the same weights judged
once). On a level grid (sparsegpt) the rules are snapped to it first; a step is then one level. The last line is one
JSON object, also written to ``reports/race_step-<NAME>.json`` (default NAME: ``<C>-<T%>``) with its provenance.
About 5 minutes per variant and seed at 260k tokens on a 2-core AVX512 CPU.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile

import torch

from evoprune import hardware, perplexity
from evoprune.data import PYTHON_DOCS, default_data
from evoprune.experiments import sensitivity_ppl
from evoprune.objective import build_objective, fresh_windows, split_settings
from evoprune.provenance import provenance
from evoprune.records import report_paths, ROOT, write_json
from evoprune.search import optimize
from evoprune.pruning import layout_genes
from evoprune.search_runs import on_grid, rule_allocations
from evoprune.session import Session

JUDGE_DRAW = (99, 0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=["fixed:0.025", "fixed:0.05", "adaptive:0.05"])
    parser.add_argument("--criterion", default="magnitude")
    parser.add_argument("--target", type=float, default=0.45)
    parser.add_argument("--genes", default="block", help="block (one rate per block), group (attention and MLP) or "
                        "matrix (one per matrix); several, comma-separated, race each layout")
    parser.add_argument("--budgets", default="130000,260000", help="token budgets, each continuing the last")
    parser.add_argument("--seeds", default="0", help="the searches' seeds, comma-separated")
    parser.add_argument("--name", help="writes reports/race_step-NAME.json (default: <criterion>-<target%%>)")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    dtype = hardware.resolve_dtype("auto")
    session = Session("smollm2-135m", default_data())
    sensitivity = sensitivity_ppl(report_paths("offline"))
    judges = {"validation": fresh_windows(session.tokens("validation").ids, 512, 32, JUDGE_DRAW),
              PYTHON_DOCS: perplexity.windows(session.tokens(PYTHON_DOCS).ids, 1024, 16)}

    judged_before: dict[tuple, dict[str, float]] = {}

    def judged(genome) -> dict[str, float]:
        pruner = session.apply(genome, args.criterion, dtype)
        key = tuple(pruner.removed)  # the weights it prunes: a block rule given to every gene is judged once
        if key not in judged_before:
            judged_before[key] = {text: perplexity.primary(pruner.model, wins, 4, perplexity.get_dtype(dtype)).ppl
                                  for text, wins in judges.items()}
        return judged_before[key]

    figures = {"criterion": args.criterion, "target": args.target, "genes": args.genes, "dtype": dtype, "runs": [],
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rules": {}}
    for genes in args.genes.split(","):
        base = dict(model="smollm2-135m", data=default_data(), target=args.target, criterion=args.criterion,
                    strategy="race", seq_len=512, dtype=dtype, genes=genes)
        rules = rule_allocations(session, args.target, genes, sensitivity, args.criterion, dtype)
        pruner = session.pruner(args.criterion, layout_genes(genes, session.model), dtype)
        allocations = {"uniform": [args.target] * pruner.n_genes, **rules}
        figures["rules"][genes] = {name: {**judged(on_grid(pruner, genome, args.target)),
                                          "genome": on_grid(pruner, genome, args.target)}
                                   for name, genome in allocations.items()}
        for variant, seed in itertools.product(args.variants, [int(s) for s in args.seeds.split(",")]):
            rule, step = variant.split(":")
            with tempfile.TemporaryDirectory() as out:
                for budget in budgets:  # each larger budget continues the smaller one's search
                    settings, spec = split_settings({**base, "step_rule": rule, "step": float(step),
                                                     "budget_tokens": budget, "seed": seed})
                    objective = build_objective(session, spec)
                    search = optimize(objective, objective.pruner.gene_sizes(), settings, out, False, rules,
                                      spec.as_config())
                    row = {"genes": genes, "step_rule": rule, "step": float(step), "seed": seed,
                           "budget_tokens": budget, "generations": search.generation,
                           "forward_tokens": search.evaluator.forward_tokens, "last_step": search.strategy.step,
                           **judged(search.best_genome), "genome": list(search.best_genome)}
                    figures["runs"].append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "genome"}), file=sys.stderr, flush=True)
    command = " ".join(["python", *sys.argv])
    out = ROOT / "reports" / f"race_step-{args.name or f'{args.criterion}-{round(args.target * 100)}'}.json"
    write_json(out, {"figures": figures, "provenance": provenance(command=command)})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
