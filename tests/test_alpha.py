import math

import pytest
import torch

from evoprune import EvopruneError
from evoprune.alpha import (EPSILONS, alpha_rates, best_epsilon, block_alphas, matrix_alpha, spectrum_fit)
from evoprune.models import prunable_matrices, tiny_gpt2, tiny_llama


def pareto(n, alpha, xmin=1.0, seed=0):
    """n draws with density ~ x^-alpha above xmin: P(X > x) = (x / xmin)^-(alpha - 1)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return xmin * (1 - u) ** (-1 / (alpha - 1))


def with_spectrum(eigenvalues, out_features, seed=0):
    """W = U diag(sqrt(lambda)) V^T, so the eigenvalues of W^T W are exactly ``eigenvalues``."""
    gen = torch.Generator().manual_seed(seed)
    k = len(eigenvalues)
    u, _ = torch.linalg.qr(torch.randn(out_features, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
    return u @ torch.diag(eigenvalues.sqrt()) @ v.T


def authors_fit(eigs, fix_fingers=None, bins=100):
    """A line-by-line port of net_esd_estimator's fit (haiquanlu/AlphaPruning lib/esd_utils.py), one loop per xmin."""
    eigs = eigs.sort().values
    N, logs = len(eigs), eigs.log()
    if fix_fingers == "xmin_mid":
        i = int(N / 2)
        return (1 + (N - i) / (logs[i:].sum() - (N - i) * logs[i])).item()
    alphas, Ds = torch.zeros(N - 1, dtype=eigs.dtype), torch.ones(N - 1, dtype=eigs.dtype)
    if fix_fingers == "xmin_peak":
        h = eigs.log10()
        counts = torch.histc(h, bins, min=h.min(), max=h.max())
        xmin2 = 10 ** torch.linspace(h.min(), h.max(), bins + 1, dtype=eigs.dtype)[counts.argmax()]
        xmin_min, xmin_max = torch.log10(0.95 * xmin2), 1.5 * xmin2
    for i, xmin in enumerate(eigs[:-1]):
        if fix_fingers == "xmin_peak":
            if xmin < xmin_min:
                continue
            if xmin > xmin_max:
                break
        n = float(N - i)
        alpha = 1 + n / (logs[i:].sum() - n * logs[i])
        alphas[i] = alpha
        if alpha > 1:
            Ds[i] = torch.max(torch.abs(1 - (eigs[i:] / xmin) ** (-alpha + 1) - torch.arange(n) / n))
    return alphas[torch.argmin(Ds)].item()


@pytest.mark.parametrize("true_alpha", [2.0, 3.0, 4.5])
@pytest.mark.parametrize("xmin", ["peak", "ks"])
def test_exponent_recovered_on_a_matrix_with_a_known_power_law_spectrum(true_alpha, xmin):
    weight = with_spectrum(pareto(300, true_alpha, xmin=0.01, seed=1), out_features=400)
    assert matrix_alpha(weight, xmin) == pytest.approx(true_alpha, rel=0.12)
    assert matrix_alpha(weight.T, xmin) == pytest.approx(matrix_alpha(weight, xmin), rel=1e-4)  # same spectrum


@pytest.mark.parametrize("rule, fix_fingers", [("peak", "xmin_peak"), ("ks", None), ("mid", "xmin_mid")])
def test_fit_equals_the_authors_code(rule, fix_fingers):
    for seed in range(3):
        weight = torch.randn(96, 64, generator=torch.Generator().manual_seed(seed)) * 0.05
        weight[:8] *= 10  # a few large directions, a tail for the fit
        eigs = torch.linalg.svdvals(weight).double() ** 2
        assert spectrum_fit(eigs, rule).alpha == pytest.approx(authors_fit(eigs, fix_fingers), rel=1e-9)


def test_xmin_choice_finds_the_tail_above_a_bulk():
    """Uniform bulk in [0.5, 1] and a Pareto tail (alpha 2.5) from 1: the KS choice starts the fit at the tail,
    the median (mid) inside the bulk, which biases alpha up."""
    eigs = torch.cat([torch.linspace(0.5, 1.0, 600, dtype=torch.float64), pareto(200, 2.5, xmin=1.0, seed=3)])
    for rule in ("peak", "ks"):
        fit = spectrum_fit(eigs, rule)
        assert fit.alpha == pytest.approx(2.5, rel=0.12), rule
        assert 0.95 <= fit.xmin <= 1.05, rule
    assert spectrum_fit(eigs, "mid").alpha > 3.0


def test_peak_searches_xmins_only_near_the_histogram_peak():
    """A tight bulk at 0.01 and, after a gap, a tail from 1: peak only tries xmins up to 1.5 x the log-histogram's
    peak (in the bulk); ks tries all and starts at the tail."""
    eigs = torch.cat([torch.linspace(0.009, 0.011, 300, dtype=torch.float64), pareto(200, 2.5, xmin=1.0, seed=3)])
    assert spectrum_fit(eigs, "peak").xmin <= 1.5 * 0.011
    assert spectrum_fit(eigs, "ks").xmin >= 1.0


def test_block_alphas_are_plain_means_of_the_matrices_alphas():
    model, threads = tiny_llama(), torch.get_num_threads()
    matrices = prunable_matrices(model)
    each = {m.name: matrix_alpha(m.weight) for m in matrices}
    per_block = block_alphas(model)
    per_gene = block_alphas(model, genes_per_block=2)
    assert len(per_block) == 3 and len(per_gene) == 6
    for b in range(3):
        mine = [each[m.name] for m in matrices if m.block == b]
        assert per_block[b] == pytest.approx(sum(mine) / len(mine))
        for g in (0, 1):
            group = [each[m.name] for m in matrices if m.block == b and m.group == g]
            assert per_gene[2 * b + g] == pytest.approx(sum(group) / len(group))
    assert len(block_alphas(tiny_gpt2().model)) == 12  # Conv1D (transposed) layout too
    assert torch.get_num_threads() == threads  # the single-threaded SVD gives the threads back


def weighted_mean(rates, sizes):
    return sum(r * s for r, s in zip(rates, sizes)) / sum(sizes)


ALPHAS = [3.1, 2.4, 5.0, 4.2, 2.9, 3.7]
SIZES = [10, 30, 10, 20, 50, 10]


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("epsilon", EPSILONS + (0.0, 0.6))
@pytest.mark.parametrize("sizes", [None, SIZES])
def test_rates_meet_the_target_exactly_and_stay_in_bounds(target, epsilon, sizes):
    rates = alpha_rates(ALPHAS, target, epsilon, sizes)
    assert weighted_mean(rates, sizes or [1] * len(ALPHAS)) == pytest.approx(target, abs=1e-12)
    assert all(0.0 <= r <= 1.0 for r in rates)


def test_rates_span_one_plus_minus_epsilon_times_target_before_clipping():
    rates = alpha_rates(ALPHAS, 0.5, 0.2)
    assert max(rates) / min(rates) == pytest.approx(1.2 / 0.8)


def test_clipped_rates_redistribute_to_the_others():
    rates = alpha_rates(ALPHAS, 0.9, 0.4, SIZES)
    assert rates[2] == 1.0 and max(rates) == 1.0  # the largest alpha is clipped
    assert weighted_mean(rates, SIZES) == pytest.approx(0.9, abs=1e-12)


def test_epsilon_zero_or_equal_alphas_give_uniform_rates():
    assert alpha_rates(ALPHAS, 0.5, 0.0, SIZES) == [0.5] * 6
    assert alpha_rates([3.0] * 4, 0.7, 0.3) == [0.7] * 4


def test_higher_alpha_is_pruned_more():
    rates = alpha_rates(ALPHAS, 0.5, 0.3, SIZES)
    order = sorted(range(6), key=lambda g: ALPHAS[g])
    assert [rates[g] for g in order] == sorted(rates)
    assert rates[ALPHAS.index(max(ALPHAS))] > 0.5 > rates[ALPHAS.index(min(ALPHAS))]


def test_best_epsilon_takes_the_lowest_score_and_ignores_nan():
    def spread_of_rates(rates):  # a stand-in objective with a minimum at epsilon = 0.2
        return abs(max(rates) / min(rates) - 1.2 / 0.8)
    choice = best_epsilon(spread_of_rates, ALPHAS, 0.5)
    assert choice.epsilon == 0.2 and choice.rates == alpha_rates(ALPHAS, 0.5, 0.2)
    assert sorted(choice.scores) == list(EPSILONS)
    nan_first = best_epsilon(lambda r: math.nan if max(r) > 0.6 else 1.0, ALPHAS, 0.5, epsilons=[0.4, 0.1])
    assert nan_first.epsilon == 0.1


@pytest.mark.parametrize("call, fix", [
    (lambda: alpha_rates(ALPHAS, 0.5, -0.1), "epsilon"),
    (lambda: alpha_rates(ALPHAS, 0.5, 1.0), "epsilon"),
    (lambda: alpha_rates(ALPHAS, 0.0, 0.2), "target"),
    (lambda: alpha_rates(ALPHAS, 1.0, 0.2), "target"),
    (lambda: alpha_rates(ALPHAS, 0.5, 0.2, sizes=[1, 2]), "sizes"),
    (lambda: alpha_rates([1.0, math.nan], 0.5, 0.2), "finite"),
    (lambda: best_epsilon(sum, ALPHAS, 0.5, epsilons=[]), "EPSILONS"),
    (lambda: matrix_alpha(torch.zeros(8, 8)), "dense model"),
    (lambda: matrix_alpha(torch.ones(3, 3, 3)), "2-D"),
    (lambda: spectrum_fit(torch.ones(5), "median"), "peak"),
    (lambda: block_alphas(tiny_llama(), genes_per_block=3), "genes_per_block"),
])
def test_bad_input_raises_with_a_fix(call, fix):
    with pytest.raises(EvopruneError, match=fix):
        call()
