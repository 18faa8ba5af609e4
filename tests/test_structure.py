"""The codebase's shape: the optimizer and the report run without torch, the optimizer knows nothing of the model
side, every module stays small, and a criterion is one registered definition that every part then offers."""
import ast
import subprocess
import sys

import pytest

from evoprune.records import ROOT

PACKAGE = ROOT / "lib" / "evoprune"
MAX_LINES = 450


def imported_modules(module: str) -> set[str]:
    """The evoprune modules ``module`` imports, at the top or inside functions."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evoprune"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_the_optimizer_and_the_report_import_no_torch():
    code = "import sys, evoprune.search, evoprune.report; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", ["search", "strategies"])
def test_the_optimizer_imports_nothing_of_the_model_side(module):
    model_side = {f"evoprune.{name}" for name in ("session", "models", "pruning", "data", "perplexity", "hardware",
                                                   "objective", "criteria")}
    assert not imported_modules(module) & model_side


def test_no_module_is_longer_than_the_standard():
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_a_criterion_registered_once_is_a_choice_everywhere_and_prunes():
    import torch

    from evoprune import criteria
    from evoprune.cli import build_parser
    from evoprune.models import tiny_gpt2
    from evoprune.objective import split_settings
    from evoprune.pruning import build_pruner

    def signed(matrix, norms=None):  # |W| times a fixed random sign: a criterion in one definition
        weights = matrix.out_in().abs().float()
        sign = torch.randint(0, 2, weights.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return weights * sign

    criteria.register(criteria.Criterion("signed", signed))
    try:
        for command in ("eval", "search", "export", "downstream"):
            assert "signed" in criterion_flag(build_parser(), command).help, command
        assert split_settings({"target": 0.5, "criterion": "signed"})[1].criterion == "signed"
        pruner = build_pruner(tiny_gpt2().model, "signed")
        pruner.apply(0.5)
        assert pruner.block_sparsity() == pytest.approx(0.5, abs=1e-3)
        pruner.restore()
        assert pruner.zeros() == 0
    finally:
        del criteria.CRITERIA["signed"]
    assert "signed" not in criterion_flag(build_parser(), "eval").help


def criterion_flag(parser, command: str):
    sub = parser._subparsers._group_actions[0].choices[command]
    return next(action for action in sub._actions if "--criterion" in action.option_strings)


def test_a_criterion_may_bring_its_own_pruner_instead_of_a_score():
    from evoprune import EvopruneError, criteria
    from evoprune.models import tiny_gpt2
    from evoprune.pruning import Pruner, build_pruner

    made = []

    def factory(model, name, genes_per_block, calibration):  # e.g. SparseGPT's reconstructed weights
        made.append((name, genes_per_block))
        return Pruner(model, "magnitude", genes_per_block, calibration)

    criteria.register(criteria.Criterion("own-pruner", pruner=factory))
    try:
        pruner = build_pruner(tiny_gpt2().model, "own-pruner", 2)
        assert made == [("own-pruner", 2)] and pruner.n_genes == 24
    finally:
        del criteria.CRITERIA["own-pruner"]
    with pytest.raises(EvopruneError, match="not both"):
        criteria.register(criteria.Criterion("both", score=criteria.magnitude_scores, pruner=factory))


def test_no_module_but_the_optimizer_reads_a_checkpoint():
    readers = [path.name for path in PACKAGE.glob("*.py")
               if path.name != "search.py" and ("CHECKPOINT" in path.read_text() or "checkpoint.json" in path.read_text())]
    assert readers == []
