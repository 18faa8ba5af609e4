"""The search objective on a model: what a fitness needs, declared once (``FitnessSpec``), and the fitness itself
(``ModelObjective``: prune the model to a genome, score a sample of windows).

The optimizer (``search``) knows none of this: it gets ``build_objective(session, spec, ...)`` as its objective
and ``spec.as_config()`` as the rest of the search's identity (``identity``). The command line's search flags and
the profiles' run entries are the fields of ``search.Settings`` and of ``FitnessSpec`` (``split_settings``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from evoprune import EvopruneError, perplexity
from evoprune.criteria import get_criterion, names as criterion_names
from evoprune.prefix import PrefixScorer, scoring_order
from evoprune.genes import GENES
from evoprune.pruning import Pruner, layout_genes
from evoprune.options import applying, flag, option, strategy_defaults
from evoprune.search import Settings

FITNESS_KINDS = ("ppl", "kl")
FITNESS_SPLITS = ("validation", "test")
FITNESS_PROTOCOLS = ("primary", "study")


@dataclass
class FitnessSpec:
    """What a search's fitness measures and how its best genome is reported. None means the strategy's default
    (``for_strategy``): the published strategy scores the study's protocol on test, the others primary perplexity
    on validation."""
    model: str = option("smollm2-135m, tiny-gpt2, a hub id (gpt2) or a local directory", default="gpt2")
    data: str | None = option("'wikitext2' (hub) or a local directory like ../shared/data")
    criterion: str = option("a registered criterion (criteria.py): magnitude, wanda, ...", default="magnitude")
    fitness: str = option("ppl, or kl (KL divergence from the dense model; not published)", default="ppl")
    fitness_split: str | None = option("validation, or test (published only, as the study did)",
                                       published="test", elitist="validation", race="validation")
    protocol: str | None = option("perplexity protocol of fitness: study (the published GA's windows) or primary "
                                  "(non-overlapping windows)", published="study", elitist="primary",
                                  race="primary")
    test_windows: int | None = option("windows of the reported test numbers (default: all)")
    study_windows: int | None = option("windows of the reported study-protocol numbers (default: --test-windows; 0: "
                                       "none)")
    dtype: str = option("dtype of fitness: auto (bfloat16 where measured fast), float32 or bfloat16",
                        default="auto")
    test_dtype: str = option("dtype of the reported test numbers", default="float32")
    genes: str = option("block (one rate per block), group (attention and MLP rates per block) or matrix (one rate "
                        "per matrix)", default="block")
    seq_len: int = option("tokens per fitness window (reported test numbers always use 1024)", default=1024)
    batch_size: int = option("windows per forward", default=4)

    def for_strategy(self, strategy: str) -> "FitnessSpec":
        """The spec with ``strategy``'s defaults filled in, checked against it."""
        strategy_defaults(self, strategy)
        self.check(strategy)
        return self

    def as_config(self) -> dict:
        return applying(self, "race")  # every field applies to every strategy

    def check(self, strategy: str) -> None:
        choices = {"fitness": FITNESS_KINDS, "genes": GENES, "fitness_split": FITNESS_SPLITS,
                   "protocol": FITNESS_PROTOCOLS, "criterion": criterion_names(),
                   "dtype": perplexity.DTYPE_CHOICES, "test_dtype": tuple(perplexity.DTYPES)}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise EvopruneError(f"unknown {flag(name)} {value!r}: use one of {', '.join(allowed)}.")
        for name in ("test_windows", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EvopruneError(f"{flag(name)} must be at least 1.")
        if self.study_windows is not None and self.study_windows < 0:
            raise EvopruneError("--study-windows must be at least 0 (0: no study-protocol numbers).")
        if self.seq_len < 2:
            raise EvopruneError("--seq-len must be at least 2.")
        if strategy == "published":
            if self.fitness != "ppl":
                raise EvopruneError("--strategy published uses the published fitness (study-protocol perplexity): "
                                    "drop --fitness or use --strategy elitist.")
            if self.genes != "block":
                raise EvopruneError("--strategy published is the published GA, one gene per block: drop --genes or "
                                    "use --strategy elitist.")
        elif self.fitness_split == "test":
            raise EvopruneError(f"--strategy {strategy} keeps the test split held out: use --fitness-split "
                                f"validation (or --strategy published to reproduce the published fitness on test).")


def split_settings(values: dict) -> tuple[Settings, FitnessSpec]:
    """A flat search description (command-line flags, a profile's run entry) as the optimizer's settings and the
    fitness spec, the strategy's defaults filled in."""
    own, spec = {f.name for f in fields(Settings)}, {f.name for f in fields(FitnessSpec)}
    unknown = sorted(set(values) - own - spec)
    if unknown:
        raise EvopruneError(f"unknown search setting {unknown[0]!r}: use one of {', '.join(sorted(own | spec))}.")
    settings = Settings.from_dict({k: v for k, v in values.items() if k in own})
    spec = FitnessSpec(**{k: v for k, v in values.items() if k in spec}).for_strategy(settings.strategy)
    check_levels(settings, spec)
    return settings, spec


def check_levels(settings: Settings, spec: FitnessSpec) -> None:
    """A criterion whose rates are the levels of a grid (SparseGPT) is searched by the race, whose moves are level
    switches, at a target that is a level: refused before anything is loaded or built."""
    grid = get_criterion(spec.criterion).grid
    if grid is None:
        return
    if settings.strategy != "race":
        raise EvopruneError(f"--criterion {spec.criterion} takes only the levels {list(grid)}: search it with "
                            "--strategy race, whose moves are level switches.")
    if not any(abs(settings.target - level) < 1e-9 for level in grid):
        raise EvopruneError(f"--target {settings.target} is not a level of --criterion {spec.criterion} "
                            f"({list(grid)}): give one of them.")


def identity(settings: Settings, spec: FitnessSpec) -> dict:
    """A search's identity: the config its checkpoint and result are resumed under."""
    return {**settings.as_config(), **spec.as_config()}


def build_objective(session, spec: FitnessSpec, fitness_windows: int | None = None,
                    reuse: bool = True) -> "ModelObjective":
    """Fitness of genomes on ``session``'s model for ``spec`` (its dtype already resolved); ``fitness_windows``:
    the full-fidelity sample, checked against the split; ``reuse``: skip the blocks a genome prunes as a recently
    scored one did (the same numbers)."""
    pruner = session.pruner(spec.criterion, layout_genes(spec.genes, session.model), spec.dtype)
    return ModelObjective(pruner, session.tokens(spec.fitness_split).ids, spec, fitness_windows, reuse)


# --- the model objective -------------------------------------------------------------------------------------

@torch.inference_mode()
def mean_kl(model: torch.nn.Module, wins: torch.Tensor, dense_hidden: torch.Tensor, batch_size: int,
            dtype: torch.dtype, hidden=perplexity.final_hidden) -> float:
    """Mean over predicted tokens of KL(dense || model). The dense model's next-token distributions come from its
    final hidden states (``dense_hidden``, from ``final_hidden`` before pruning) through the same, never pruned,
    LM head, chunk by chunk: a few MB per window instead of a vocabulary-wide tensor."""
    total = 0.0
    for start in range(0, len(wins), batch_size):
        pruned = hidden(model, wins[start: start + batch_size], dtype)
        chunks = zip(perplexity.chunk_logits(model, pruned, dtype),
                     perplexity.chunk_logits(model, dense_hidden[start: start + batch_size], dtype))
        for (_, logits), (_, dense) in chunks:
            ref = dense.log_softmax(-1)
            total += (ref.exp() * (ref - logits.log_softmax(-1))).sum().double().item()
    return total / (len(wins) * (wins.shape[1] - 1))


def fresh_windows(ids: torch.Tensor, seq_len: int, n: int, draw: tuple) -> torch.Tensor:
    """``n`` windows at random places of the whole split, the same for the same ``draw`` (seed, generation,
    stage) on every run."""
    rng = np.random.default_rng([int(x) for x in draw])
    starts = rng.integers(0, ids.numel() - seq_len + 1, size=n)
    return torch.stack([ids[s: s + seq_len] for s in starts])


class ModelObjective:
    """Fitness of a genome: prune the model (in the fitness dtype) in place, then score a sample of windows: the
    first ``n`` fitness windows, or a fresh sample (``strategies.fresh_sample``). Study-protocol perplexity when the
    spec's protocol is ``study`` (the published GA's), else primary perplexity or KL to the dense model on the
    same windows. Blocks a genome prunes as a recently scored one did are not run again (``prefix.PrefixScorer``:
    the same numbers, bit for bit), and a batch of genomes (``map``) is scored in the order that shares the most
    blocks."""

    def __init__(self, pruner: Pruner, ids: torch.Tensor, spec: FitnessSpec, fitness_windows: int | None = None,
                 reuse: bool = True):
        self.pruner, self.model, self.ids, self.spec = pruner, pruner.model, ids, spec
        self.hidden = PrefixScorer(pruner).final_hidden if reuse else perplexity.final_hidden
        self.reuse = reuse
        self.study = spec.protocol == "study"
        self.tokens_per_window = spec.seq_len  # what the optimizer's budget counts per window scored
        self.grid = getattr(pruner, "grid", None)  # a level database's grid: the optimizer moves between its levels
        self.dtype = perplexity.get_dtype(spec.dtype)
        if fitness_windows is not None:
            self.check_windows(fitness_windows)
        self.samples: dict = {}  # sample -> (windows, dense final hidden states for KL)
        self.setup_tokens = 0

    def check_windows(self, n: int) -> None:
        tokens, seq_len = self.ids.numel(), self.spec.seq_len
        if self.study:
            available = (tokens - seq_len) // perplexity.STUDY_STRIDE + 1 if tokens >= seq_len else 0
        else:
            available = tokens // seq_len
        if n > available:
            raise EvopruneError(f"--fitness-windows {n} is more than the {available} windows of {seq_len} tokens "
                                f"the {self.spec.fitness_split} split holds: lower it.")

    def sample(self, sample) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The windows of a sample and, for KL fitness, the dense model's final hidden states on them. Fresh
        samples are kept only while they are in use (a generation's stages)."""
        if sample not in self.samples:
            seq_len = self.spec.seq_len
            if isinstance(sample, int):
                wins = (perplexity.study_windows(self.ids, seq_len, perplexity.STUDY_STRIDE, sample) if self.study
                        else perplexity.windows(self.ids, seq_len, sample))
            else:
                wins = fresh_windows(self.ids, seq_len, sample[1], sample[0])
                for old in [k for k in self.samples if not isinstance(k, int)][:-2]:
                    del self.samples[old]
            dense = None
            if self.spec.fitness == "kl":
                genome = self.pruner.genome
                self.pruner.restore()
                bs = self.spec.batch_size
                dense = torch.cat([perplexity.final_hidden(self.model, wins[s: s + bs], self.dtype)
                                   for s in range(0, len(wins), bs)])
                self.pruner.apply(genome)
                self.setup_tokens += wins.numel()
            self.samples[sample] = (wins, dense)
        return self.samples[sample]

    def __call__(self, genome: list, sample) -> float:
        wins, dense = self.sample(sample)
        self.pruner.apply(genome)
        batch_size, hidden = self.spec.batch_size, self.hidden
        if dense is not None:
            return mean_kl(self.model, wins, dense, batch_size, self.dtype, hidden)
        score = perplexity.study if self.study else perplexity.primary
        return score(self.model, wins, batch_size, self.dtype, hidden=hidden).ppl

    def map(self, genomes: list, sample) -> list[float]:
        values = {}
        for i in scoring_order(self.pruner, genomes) if self.reuse else range(len(genomes)):
            values[i] = self(genomes[i], sample)
        return [values[i] for i in range(len(genomes))]
