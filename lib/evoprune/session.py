"""A session: one loaded model and everything measured on it.

It loads the model once (float32), tokenizes each split once, calibrates each criterion on its validation windows
(``Criterion.calibration``), keeps one pruner per criterion, gene layout and dtype (a copy of the model in another
dtype is made once and shared) and looks test perplexities up in the profile's measurement log before measuring
them. The notebooks' experiments, the command line, the panel, ``make bench`` and the search objective
(``objective``) all go through it.

Pruners of one model share its weights: ``pruner()`` hands one out after giving the model back dense from the one
that last changed it, so ask the session for a pruner again after using another criterion or layout.
"""
from __future__ import annotations

from pathlib import Path

import torch

from evoprune import alpha, hardware, models, perplexity
from evoprune.criteria import get_criterion
from evoprune.data import PYTHON_DOCS, Tokens, load_tokens, resolve_data
from evoprune.pruning import Pruner, build_pruner, genes_per_block, outlier_ratios
from evoprune.measurements import MeasurementLog
from evoprune.records import REPORTED_DTYPE


class Session:
    def __init__(self, model: str, data: str | None = None, log: str | Path | None = None):
        self.name = model
        self.data = resolve_data(data)
        hardware.keep_freed_memory()
        self.loaded = models.load_model(model)  # float32; other dtypes are copies (``model_in``)
        self.log = MeasurementLog(log)
        self._tokens: dict[str, Tokens] = {}
        self._pruners: dict[tuple, Pruner] = {}
        self._copies: dict[str, torch.nn.Module] = {}
        self._active: dict[int, tuple] = {}  # id(model) -> the pruner that last changed it
        self._outliers: list[float] | None = None
        self._alphas: dict[int, list[float]] = {}

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def n_blocks(self) -> int:
        return len(models.blocks(self.model))

    def tokens(self, split: str) -> Tokens:
        """A split of the session's data, or the second held-out text (``split="python-docs"``)."""
        if split not in self._tokens:
            data, part = (PYTHON_DOCS, "test") if split == PYTHON_DOCS else (self.data, split)
            self._tokens[split] = load_tokens(self.tokenizer, data, part)
        return self._tokens[split]

    def calibration(self, criterion: str = "wanda") -> torch.Tensor:
        """The validation windows that calibrate a criterion (``Criterion.calibration``: Wanda and OWL share
        theirs, SparseGPT's Hessians take more, shorter windows)."""
        n_windows, seq_len = get_criterion(criterion).calibration
        return perplexity.windows(self.tokens("validation").ids, seq_len, n_windows)

    def outlier_ratios(self) -> list[float]:
        """OWL's per-block outlier ratios of the dense model on the calibration windows, computed once."""
        if self._outliers is None:
            self.restore()
            self._outliers = outlier_ratios(self.model, self.calibration())
        return self._outliers

    def block_alphas(self, genes_per_block: int = 1) -> list[float]:
        """AlphaPruning's heavy-tail exponents of the dense model, per block (or per attention and MLP group, or
        per matrix), computed once."""
        if genes_per_block not in self._alphas:
            self.restore()
            self._alphas[genes_per_block] = alpha.block_alphas(self.model, genes_per_block)
        return self._alphas[genes_per_block]

    # --- pruners ---

    def model_in(self, dtype: str) -> torch.nn.Module:
        """The model for fitness in ``dtype``: the float32 model itself, or one copy whose block matrices are
        stored in ``dtype`` (``models.run_fast_in``; run it under autocast, ``perplexity.autocast``)."""
        if dtype == REPORTED_DTYPE:
            return self.model
        if dtype not in self._copies:
            self._give_back(self.model)  # the copy starts dense
            self._copies[dtype] = models.copy_in(self.model, perplexity.get_dtype(dtype))
        return self._copies[dtype]

    def pruner(self, criterion: str = "magnitude", genes_per_block: int = 1, dtype: str = REPORTED_DTYPE) -> Pruner:
        """The pruner of ``criterion`` and gene layout over the model in ``dtype``, built once."""
        key = (criterion, genes_per_block, dtype)
        if key not in self._pruners:
            if dtype == REPORTED_DTYPE:
                needs_calibration = get_criterion(criterion).needs_calibration
                self._give_back(self.model)
                calibration = self.calibration(criterion) if needs_calibration else None
                self._pruners[key] = build_pruner(self.model, criterion, genes_per_block, calibration)
            else:
                base = self.pruner(criterion, genes_per_block)
                base.restore()
                model = self.model_in(dtype)
                self._give_back(model)
                self._pruners[key] = base.on(model)  # same orderings, same weights pruned
        pruner = self._pruners[key]
        model_id = id(pruner.model)
        if self._active.get(model_id, key) != key:
            self._pruners[self._active[model_id]].restore()
        self._active[model_id] = key
        return pruner

    def _give_back(self, model: torch.nn.Module) -> None:
        """Make ``model`` dense again through whichever pruner changed it last."""
        key = self._active.pop(id(model), None)
        if key is not None:
            self._pruners[key].restore()

    def genes_per_block(self, genome) -> int:
        """The layout of a rate vector from its length (``pruning.genes_per_block``): 1, 2 or one gene per matrix."""
        return genes_per_block(genome, self.model)

    def apply(self, genome, criterion: str = "magnitude", dtype: str = REPORTED_DTYPE) -> Pruner:
        """Prune to a rate vector (one rate per block, per block x group, per matrix, or one number for all)."""
        pruner = self.pruner(criterion, self.genes_per_block(genome), dtype)
        pruner.apply(genome)
        return pruner

    def restore(self) -> None:
        """Every model of the session dense again."""
        for model in [self.model, *self._copies.values()]:
            self._give_back(model)

    # --- measurements ---

    def measure(self, pruner: Pruner, protocol: str = "primary", windows: int | None = None,
                dtype: str = REPORTED_DTYPE, split: str = "test", seq_len: int = 1024, stride: int = perplexity.STUDY_STRIDE,
                batch_size: int = 4) -> perplexity.Perplexity:
        """Perplexity of ``pruner``'s model as pruned now, or the logged value of the same measurement."""
        tokens = self.tokens(split)
        key = self.log.key(weights=self.loaded.weights_hash, criterion=pruner.criterion, removed=pruner.removed,
                           text=tokens.text_sha256, split=tokens.split, protocol=protocol, windows=windows,
                           dtype=dtype, seq_len=seq_len, stride=stride)
        value = self.log.get(key)
        if value is None:
            value = self.log.put(key, perplexity.measure(
                pruner.model, tokens.ids, protocol, seq_len, windows, stride, batch_size,
                perplexity.get_dtype(dtype)).as_dict())
        return perplexity.Perplexity(**value)

    def reported(self, genome, criterion: str = "magnitude", windows: int | None = None, batch_size: int = 4,
                 dtype: str = REPORTED_DTYPE, study_windows: int | None = None) -> dict:
        """Test perplexity of the model pruned to ``genome`` under both protocols (float32 unless asked), on
        ``windows`` primary windows and ``study_windows`` (default: ``windows``; 0: no study-protocol number)
        study-protocol windows."""
        pruner = self.apply(genome, criterion, dtype)
        primary = self.measure(pruner, "primary", windows, dtype, batch_size=batch_size)
        study_windows = windows if study_windows is None else study_windows
        study = (self.measure(pruner, "study", study_windows, dtype, batch_size=batch_size) if study_windows != 0
                 else None)
        return {"genome": pruner.genome, "block_sparsity": pruner.block_sparsity(),
                "model_sparsity": pruner.model_sparsity(), "test_ppl": primary.ppl, "test_windows": primary.n_windows,
                "study_ppl": study.ppl if study else None, "study_windows": study.n_windows if study else 0}

    def data_provenance(self, splits=("test", "validation")) -> dict:
        """The data setting and, per split, its file or hub source, text hash and token count."""
        return {"setting": self.data, **{split: self.tokens(split).provenance() for split in splits}}
