import pytest
import torch

from evoprune import EvopruneError
from evoprune.models import blocks, prunable_matrices, tiny_gpt2, tiny_llama
from evoprune.criteria import get_criterion, wanda_scores
from evoprune.pruning import (Pruner, count_for, input_norms, ordering, outlier_ratios,
                              owl_rates, sensitivity_rates)


@pytest.fixture
def calibration():
    return torch.randint(0, 257, (3, 64), generator=torch.Generator().manual_seed(0))


def test_input_norms_match_a_direct_computation(tiny, calibration):
    model = tiny.model
    norms = input_norms(model, calibration, batch_size=2)
    block = model.transformer.h[0]
    with torch.no_grad():
        x = block.ln_1(model.transformer.wte(calibration) + model.transformer.wpe(torch.arange(64)))
    expected = x.reshape(-1, x.shape[-1]).pow(2).sum(0).sqrt()
    assert torch.allclose(norms["transformer.h.0.attn.c_attn"], expected, rtol=1e-5)


def test_wanda_scores_are_weight_times_input_norm(tiny, calibration):
    norms = input_norms(tiny.model, calibration)
    m = next(m for m in prunable_matrices(tiny.model) if m.name == "transformer.h.3.mlp.c_proj")
    direct = torch.stack([m.weight[:, o].abs() * norms[m.name] for o in range(m.weight.shape[1])])  # (out, in)
    assert torch.allclose(wanda_scores(m, norms), direct)


def test_wanda_prunes_each_output_row_equally_on_conv1d(tiny, calibration):
    pruner = Pruner(tiny.model, "wanda", calibration=calibration)
    pruner.apply(0.5)
    for m in pruner.matrices:
        per_row = (m.out_in() == 0).sum(dim=1)
        assert per_row.max() - per_row.min() <= 1, m.name
        assert int(per_row.sum()) == count_for(0.5, m.numel)


def test_wanda_needs_calibration(tiny):
    with pytest.raises(EvopruneError, match="calibration"):
        Pruner(tiny.model, "wanda")


def test_unknown_criterion(tiny):
    with pytest.raises(EvopruneError, match="unknown criterion.*magnitude.*wanda"):
        Pruner(tiny.model, "random")


@pytest.mark.parametrize("target", [0.3, 0.45, 0.6])
def test_owl_rates_average_to_the_target(tiny, calibration, target):
    rates = owl_rates(outlier_ratios(tiny.model, calibration, threshold_m=5), target, spread=0.08)
    assert len(rates) == 12
    assert sum(rates) / 12 == pytest.approx(target)
    assert max(rates) - min(rates) == pytest.approx(0.16)


@pytest.mark.parametrize("build", [lambda: tiny_gpt2().model, tiny_llama], ids=["gpt2", "llama"])
def test_outlier_ratios_are_owls_block_wide_definition(build, calibration):
    """As luuyin/OWL computes it: per block, |W| * ||X||_2 of every matrix flattened and concatenated, and the share
    of those scores above M times their one mean (not each matrix against its own mean)."""
    model = build()
    tokens = calibration % model.config.vocab_size
    norms = input_norms(model, tokens)
    expected = []
    for b in range(len(blocks(model))):
        mats = [m for m in prunable_matrices(model) if m.block == b]
        scores = torch.cat([(m.out_in().abs() * norms[m.name].unsqueeze(0)).flatten() for m in mats])
        expected.append(int((scores > 5 * scores.mean()).sum()) / scores.numel())
    assert outlier_ratios(model, tokens, threshold_m=5) == pytest.approx(expected, abs=1e-12)


def test_sensitivity_rates_prune_robust_blocks_more():
    rates = sensitivity_rates([50.0, 10.0, 30.0, 20.0], 0.5, spread=0.1)
    assert sum(rates) / 4 == pytest.approx(0.5)
    assert rates[1] == pytest.approx(0.6) and rates[0] == pytest.approx(0.4)


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
@pytest.mark.parametrize("build", [lambda: tiny_gpt2().model, tiny_llama], ids=["gpt2", "llama"])
def test_orderings_sorted_on_threads_equal_those_sorted_one_by_one(build, criterion, calibration):
    model = build()
    tokens = calibration % model.config.vocab_size
    score = get_criterion(criterion)
    norms = input_norms(model, tokens) if score.needs_calibration else None
    pruner = Pruner(model, criterion, calibration=tokens)
    with torch.no_grad():
        one_by_one = [ordering(score.score(m, norms), score.per_row, m.transposed) for m in pruner.matrices]
    assert all(torch.equal(a, b) for a, b in zip(pruner.orders, one_by_one))
