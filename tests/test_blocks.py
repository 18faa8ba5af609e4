import pytest
import torch
from transformers import AutoModelForCausalLM

from evoprune import EvopruneError
from evoprune.export import export
from evoprune.models import BlocksRemoved, blocks, remove_blocks, tiny_gpt2, tiny_llama
from evoprune.pruning import Pruner
from evoprune.timing import compare_latency, interleaved_timings, latency


@pytest.mark.parametrize("make", [lambda: tiny_gpt2().model, tiny_llama])
def test_removed_blocks_leave_the_model(make):
    model = make()
    n, before = len(blocks(model)), sum(p.numel() for p in model.parameters())
    per_block = sum(p.numel() for p in blocks(model)[0].parameters())
    remove_blocks(model, [0, n - 1])
    assert len(blocks(model)) == n - 2
    assert sum(p.numel() for p in model.parameters()) == before - 2 * per_block
    assert getattr(model.config, "n_layer", getattr(model.config, "num_hidden_layers", None)) == n - 2
    model(torch.zeros(1, 8, dtype=torch.long))  # still runs


def test_blocks_removed_context_restores_the_model():
    model = tiny_llama()
    ids = torch.randint(0, 64, (1, 16))
    dense = model(ids).logits
    with BlocksRemoved(model, [1]):
        assert len(blocks(model)) == 2 and model.config.num_hidden_layers == 2
        assert not torch.equal(model(ids).logits, dense)
        model.generate(ids, max_new_tokens=3, do_sample=False)  # the KV cache follows the renumbered layers
    assert len(blocks(model)) == 3 and model.config.num_hidden_layers == 3
    assert torch.equal(model(ids).logits, dense)


@pytest.mark.parametrize("drop, message", [([0, 1, 2], "cannot remove all"), ([5], "0..2"), ([-1], "0..2")])
def test_bad_removals(drop, message):
    with pytest.raises(EvopruneError, match=message):
        remove_blocks(tiny_llama(), drop)


@pytest.mark.parametrize("make", [lambda: tiny_gpt2().model, tiny_llama])
def test_export_reload_gives_identical_logits(tmp_path, make):
    model = make()
    Pruner(model).apply(0.5)
    remove_blocks(model, [1])
    ids = torch.randint(0, 64, (1, 32))
    info = export(model, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert len(blocks(reloaded)) == len(blocks(model))
    assert info["nonzero_parameters"] < info["parameters"] and info["bytes_on_disk"] > 0


def test_latency_reports_both_figures():
    result = latency(tiny_llama(), torch.arange(8), new_tokens=4, seq_len=64, repeats=1)
    assert result["ms_per_token"] > 0 and result["ms_per_forward"] > 0


def test_interleaved_timings_go_round_robin_in_rotated_order():
    order = []
    interleaved_timings({k: (lambda k=k: order.append(k)) for k in "abc"}, 2)
    assert order == list("abcabcbca")  # one warm-up call each, then rounds starting one later each time


def test_compare_latency_times_each_removal_and_leaves_the_model_whole():
    model = tiny_gpt2().model
    timed = compare_latency(model, {"whole": [], "half": range(6)}, torch.arange(8), new_tokens=2, seq_len=64,
                            repeats=3)
    assert timed["whole"]["blocks"] == 12 and timed["half"]["blocks"] == 6 and len(blocks(model)) == 12
    assert timed["half"]["forward"]["repeats"] == 3 and timed["half"]["token"]["iqr_ms"] >= 0
