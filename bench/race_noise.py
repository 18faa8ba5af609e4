"""How much a race's cheapest stage can tell children apart: 16 children of the sensitivity-ranked start (45%
magnitude, drawn as a race's first generation draws them, at the race's first step), each with the parent on the
same 32 fresh validation windows of 512 tokens, in the dtype ``auto`` chooses. Per window and genome: mean NLL and
mean KL to the dense model. The children's "true" gain is their mean paired difference to the parent over all 32
windows; the figures say how spread those gains are, how noisy one window's paired difference is, and how well
1, 2, 4 and 8 windows rank the children (Spearman, averaged over disjoint groups of windows).

Needs 01's sensitivity scan (``reports/offline/baseline.json``). Usage: python bench/race_noise.py; the last line is
one JSON object, also written to ``reports/race_noise.json`` with its provenance. About 8 minutes on a 2-core
AVX512 CPU.
"""
from __future__ import annotations

import json

import numpy as np
import torch
from torch.nn import functional as F

from evoprune import hardware, perplexity
from evoprune.data import default_data
from evoprune.experiments import sensitivity_ppl
from evoprune.pruning import sensitivity_rates
from evoprune.provenance import provenance
from evoprune.records import report_paths, ROOT, write_json
from evoprune.objective import fresh_windows
from evoprune.search import Settings
from evoprune.session import Session
from evoprune.strategies import Race, project

N_WINDOWS, BATCH = 32, 4


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


@torch.inference_mode()
def per_window(pruner, genome, wins, dense, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Mean NLL and mean KL(dense || pruned) of each window."""
    pruner.apply(genome)
    model, nll, kl = pruner.model, [], []
    weight, bias = perplexity.head_weights(model, dtype)
    for start in range(0, len(wins), BATCH):
        batch = wins[start: start + BATCH]
        hidden = perplexity.final_hidden(model, batch, dtype).reshape(-1, weight.shape[1]).to(dtype)
        logp = F.linear(hidden, weight, bias).float().log_softmax(-1)
        ref = F.linear(dense[start: start + BATCH].reshape(-1, weight.shape[1]).to(dtype), weight, bias).float()
        ref = ref.log_softmax(-1)
        nll.append(-logp.gather(1, batch[:, 1:].reshape(-1, 1)).view(len(batch), -1).mean(1))
        kl.append((ref.exp() * (ref - logp)).sum(-1).view(len(batch), -1).mean(1))
    return torch.cat(nll).double().numpy(), torch.cat(kl).double().numpy()


def main() -> None:
    dtype_name = hardware.resolve_dtype("auto")
    dtype = perplexity.get_dtype(dtype_name)
    session = Session("smollm2-135m", default_data())
    settings = Settings(target=0.45, strategy="race")
    pruner = session.pruner("magnitude", 1, dtype_name)
    sizes = pruner.gene_sizes()
    sensitivity = sensitivity_ppl(report_paths("offline"))
    parent = project(sensitivity_rates(sensitivity, 0.45), sizes, 0.45, settings.g_max).tolist()
    children = Race(settings, sizes).offspring(parent, np.random.default_rng(1))
    wins = fresh_windows(session.tokens("validation").ids, 512, N_WINDOWS, (99, 0, 0))
    pruner.restore()
    dense = torch.cat([perplexity.final_hidden(pruner.model, wins[s: s + BATCH], dtype)
                       for s in range(0, N_WINDOWS, BATCH)])
    scored = [per_window(pruner, genome, wins, dense, dtype) for genome in [parent, *children]]
    figures = {"dtype": dtype_name, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "children": len(children), "windows": N_WINDOWS, "seq_len": 512, "step": settings.step}
    for k, name in enumerate(("nll", "kl")):
        values = np.array([s[k] for s in scored])
        diff = values[1:] - values[0]  # children x windows, paired with the parent
        true = diff.mean(1)
        figures[name] = {
            "better_than_parent": float((true < 0).mean()),
            "true_gain_sd": float(true.std()), "best_true_gain": float(true.min()),
            "one_window_noise_sd": float((diff - true[:, None]).std()),
            "spearman": {n: float(np.mean([spearman(diff[:, w: w + n].mean(1), true)
                                           for w in range(0, N_WINDOWS, n)])) for n in (1, 2, 4, 8)}}
    write_json(ROOT / "reports" / "race_noise.json",
               {"figures": figures, "provenance": provenance(command="python bench/race_noise.py")})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
