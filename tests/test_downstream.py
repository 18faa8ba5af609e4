"""Downstream accuracy through lm-evaluation-harness, offline: the project's own last-word task on the local
WikiText copy, the in-memory SmolLM2 model dense and pruned, and the errors for bad task names and a missing extra."""
import json
import sys

import pytest
from conftest import extra_or_skip

from evoprune import EvopruneError
from evoprune.cli import build_parser
from evoprune.downstream import ITEMS, import_lm_eval, lastword_file, lastword_items, task_manager

LIMIT = 20  # items per model: dense gets about half right, uniform 70% magnitude none (measured 0.50 vs 0.0 on 20)


def run_cli(*argv):
    """The downstream command's result, its errors raised (main would print them and return 2)."""
    args = build_parser().parse_args(["downstream", *argv])
    return args.run(args)


def test_local_task_items_are_deterministic_and_inferable(data_dir):
    from evoprune.data import read_text
    items = lastword_items(read_text(data_dir, "test")[0])
    assert len(items) == ITEMS
    assert all(i["target"].isalpha() and i["target"].lower() in i["context"].lower().split() for i in items)
    path = lastword_file(data_dir)
    assert path.read_text().splitlines()[0] == json.dumps(items[0])


@pytest.mark.real
@pytest.mark.slow
def test_dense_beats_uniform_70_magnitude_on_the_local_task(data_dir, capsys, caplog):
    extra_or_skip(import_lm_eval)
    from evoprune import models, perplexity
    from evoprune.downstream import accuracy_rows
    from evoprune.pruning import Pruner
    loaded = models.load_model("smollm2-135m")
    pruner = Pruner(loaded.model)
    before = perplexity.forward_tokens().get("float32", 0)
    rows = accuracy_rows(loaded.model, loaded.tokenizer, pruner, {"dense": 0.0, "uniform 70%": 0.7},
                         ["wikitext_lastword"], LIMIT, data=data_dir)
    accuracy = {row["name"]: row["accuracy"] for row in rows}
    print(accuracy)
    assert [row["n"] for row in rows] == [LIMIT, LIMIT]
    assert perplexity.forward_tokens()["float32"] - before >= 2 * LIMIT * 10  # the harness's forwards are counted
    assert accuracy["dense"] >= 0.25 and accuracy["dense"] > accuracy["uniform 70%"] + 0.2
    assert pruner.removed == [0] * len(pruner.removed)  # restored
    shown = capsys.readouterr().err
    assert "downstream (wikitext_lastword)" in shown and "Running loglikelihood" not in shown  # one bar, ours
    notices = shown + caplog.text
    assert "model kwarg" not in notices  # HFLM's notice that a model was passed in, not a name: held back too


@pytest.mark.real
@pytest.mark.slow
def test_command_scores_a_pruned_model_with_provenance(data_dir):
    extra_or_skip(import_lm_eval)
    result = run_cli("--model", "smollm2-135m", "--data", data_dir, "--rates", "0.7", "--tasks", "wikitext_lastword",
                     "--limit", "5")
    task = result["tasks"]["wikitext_lastword"]
    assert task["n"] == 5 and 0.0 <= task["accuracy"] <= 1.0
    assert result["block_sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert result["provenance"]["lm_eval"] and result["provenance"]["local_task_files"]["wikitext_lastword"]["sha256"]


def test_the_harness_notices_held_back_are_shown_when_it_fails(capsys):
    from evoprune.downstream import quiet_harness
    with quiet_harness():
        print("a progress bar", file=sys.stderr)
    assert capsys.readouterr().err == ""
    with pytest.raises(RuntimeError), quiet_harness():
        print("what went wrong before", file=sys.stderr)
        raise RuntimeError("failed")
    assert "what went wrong before" in capsys.readouterr().err


def test_unknown_and_hub_tasks_are_clear_errors(data_dir, monkeypatch):
    extra_or_skip(import_lm_eval)
    with pytest.raises(EvopruneError, match="unknown task 'no_such_task': the local task is wikitext_lastword.*"
                                            "need a network"):
        run_cli("--model", "smollm2-135m", "--data", data_dir, "--tasks", "no_such_task")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EvopruneError, match="'hellaswag' reads its data from the Hugging Face hub"):
        task_manager(["hellaswag"])


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(EvopruneError, match=r"pip install 'evoprune\[downstream\]'"):
        run_cli("--model", "smollm2-135m", "--tasks", "wikitext_lastword")
