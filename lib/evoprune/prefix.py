"""Exact reuse of hidden states between genomes that prune the first blocks alike.

Pruning block j changes only block j's weights, so two genomes whose first i blocks are pruned alike feed block i
the very same hidden states. ``PrefixScorer`` keeps, for recently scored genomes and token batches, the hidden
states entering each block (a *boundary*; boundary n, after the last block, enters the final norm) and runs a new
genome from the longest matching prefix: blocks before it are skipped, their output taken from memory. When all
blocks match, only the final norm and the LM head run. Results are bit for bit those of a full forward (same
kernels on the same inputs), in float32 and on ``Pruner.in_dtype`` copies under autocast alike.

How a run from block i works: the model's block list is cut to blocks i.. (``models.BlocksRemoved``, which keeps
config layer counts and layer indices consistent) and a forward pre-hook on block i swaps its hidden-state input
for the kept tensor. The embedding still runs (cheap) and its output is dropped; GPT-2's position embeddings and
Llama's rotary tables come from positions, which do not change. Boundaries are captured by forward pre-hooks on
the blocks and on the final norm, by reference: no copies.

Blocks match when each of their matrices has the same number of weights removed (``Pruner.removed``): exactly
what decides the weights, so every gene of a block counts (group or matrix genes), and rates that differ only
by floating-point noise still match. Batches are keyed by their token ids and the dtype.

Memory: a kept genome costs (stored boundaries) x windows x seq_len x hidden x 4 bytes (float32 residual stream,
also under autocast; 2 in a model stored wholly in bfloat16). SmolLM2, 4 windows x 1024 tokens: 9.4 MB per
boundary, 283 MB for all 30, 142 MB for the 15 that ``EVERY = 2`` stores (boundaries 2, 4, ..., 30: a run starts
at the last stored boundary before the first changed block, half a block earlier on average). Before a run stores
its boundaries, least recently used genomes other than its source are dropped until they fit ``max_bytes``
(tensors a genome shares with its source counted once); if they cannot fit, the run stores nothing. So the kept
tensors never exceed ``max_bytes``. A genome that reused a prefix counts as used just before its source, so
children never push out the parent they reused; a child that reused nothing (its first stored boundary changed)
may, when only one genome fits. ``scoring_order`` gives the order that needs the fewest block forwards, reached
with room for two genomes. ``MAX_BYTES`` is sized for a
SmolLM2 search process that already holds ~2.0 GB (float32 model, pruner, bfloat16 copy): one genome of 4
windows, four of 1 window.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn

from evoprune import EvopruneError
from evoprune.models import BlocksRemoved, blocks
from evoprune.perplexity import autocast, count_forward
from evoprune.pruning import count_for

MAX_BYTES = 160 * 2**20  # SmolLM2, EVERY = 2: one genome of 4 windows x 1024 tokens (142 MB), four of 1 window
EVERY = 2                # store boundaries 2, 4, ...: half the memory; a run starts < 1 block earlier on average


def batch_key(batch: torch.Tensor, dtype: torch.dtype) -> tuple:
    """Identifies a batch of token windows by content: its shape, the run's dtype and a hash of the ids."""
    ids = batch.detach().cpu().contiguous()
    return tuple(ids.shape), str(dtype), hashlib.sha1(ids.numpy().tobytes()).hexdigest()


def block_state(pruner, counts) -> tuple:
    """Per-matrix counts of removed weights (``Pruner.removed``, or ``genome_counts``) grouped by block: what
    decides each block's weights."""
    per_block = [[] for _ in range(pruner.n_blocks)]
    for m, removed in zip(pruner.matrices, counts):
        per_block[m.block].append(removed)
    return tuple(map(tuple, per_block))


def genome_counts(pruner, genome) -> list[int]:
    """The per-matrix counts ``Pruner.apply(genome)`` would set, without applying them."""
    return [count_for(genome[pruner.gene_of(m)], m.numel) for m in pruner.matrices]


def shared_prefix(a: tuple, b: tuple) -> int:
    """Number of leading blocks two block states prune alike."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def nbytes(tensors) -> int:
    """Bytes of distinct tensors."""
    unique = {id(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in unique.values())


def scoring_order(pruner, genomes) -> list[int]:
    """Indices of ``genomes`` in lexicographic order of their block states. Scored in this order, each genome's
    longest shared prefix with any genome before it is the one with the genome just before it, so a scorer that
    keeps two genomes runs every distinct block prefix once: the fewest block forwards any order or memory gives."""
    states = [block_state(pruner, genome_counts(pruner, g)) for g in genomes]
    return sorted(range(len(genomes)), key=states.__getitem__)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last block and the LM head (GPT-2 ``ln_f``, Llama ``norm``)."""
    for name in ("norm", "ln_f"):
        module = getattr(model.base_model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise EvopruneError(f"{type(model).__name__} has no final norm named norm or ln_f: prefix reuse supports "
                        "GPT-2 and Llama-style models.")


def swap_input(tensor: torch.Tensor):
    """A forward pre-hook (with kwargs) that replaces a block's hidden-state input by ``tensor``."""
    def hook(module, args, kwargs):
        if args:
            return (tensor,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": tensor}
    return hook


def capture_input(store: dict, index: int):
    """A forward pre-hook (with kwargs) that keeps a module's hidden-state input as ``store[index]``."""
    def hook(module, args, kwargs):
        store[index] = args[0] if args else kwargs["hidden_states"]
    return hook


class PrefixScorer:
    """Scores the model of ``pruner`` as currently pruned, reusing the longest block prefix it shares with a kept
    genome on the same batch. ``max_bytes``: budget of kept hidden states; ``every``: store every k-th boundary.
    ``blocks_run`` / ``blocks_total`` count block forwards run and needed without reuse."""

    def __init__(self, pruner, max_bytes: int = MAX_BYTES, every: int = EVERY):
        if every < 1:
            raise EvopruneError("every must be at least 1 (store every k-th block boundary).")
        self.pruner, self.model = pruner, pruner.model
        self.n_blocks = len(blocks(self.model))
        self.max_bytes, self.every = max_bytes, every
        self.entries: OrderedDict[tuple, dict[int, torch.Tensor]] = OrderedDict()
        self.blocks_run = self.blocks_total = 0

    def stores(self, boundary: int) -> bool:
        return boundary == self.n_blocks or (boundary > 0 and boundary % self.every == 0)

    def state(self) -> tuple:
        return block_state(self.pruner, self.pruner.removed)

    def best_source(self, key: tuple, state: tuple) -> tuple[int, tuple | None]:
        """The kept genome on this batch with the furthest usable boundary, and that boundary (0: none)."""
        start, source = 0, None
        for (k, kept_state), kept in self.entries.items():
            if k != key:
                continue
            same = shared_prefix(state, kept_state)
            usable = max((b for b in kept if b <= same), default=0)
            if usable > start:
                start, source = usable, (k, kept_state)
        return start, source

    def cached_bytes(self) -> int:
        return nbytes(t for kept in self.entries.values() for t in kept.values())

    def make_room(self, batch: torch.Tensor, start: int, source: tuple | None) -> bool:
        """Drop least recently used entries other than ``source`` until the boundaries a run from ``start`` passes
        fit the budget; False (nothing dropped) if they cannot fit."""
        embedding = self.model.get_input_embeddings()  # the residual stream's width and dtype
        boundary = batch.numel() * embedding.embedding_dim * embedding.weight.element_size()
        need = boundary * sum(self.stores(b) for b in range(start + 1, self.n_blocks + 1))
        if need + nbytes(self.entries[source].values() if source else ()) > self.max_bytes:
            return False
        for entry in [e for e in self.entries if e != source]:
            if self.cached_bytes() + need <= self.max_bytes:
                break
            del self.entries[entry]
        return True

    def remember(self, entry: tuple, kept: dict, source: tuple | None) -> None:
        self.entries[entry] = kept
        self.entries.move_to_end(entry)
        if source is not None:  # the source stays the most recently used, its child next
            self.entries.move_to_end(source)

    def run_from(self, batch: torch.Tensor, start: int, first: torch.Tensor | None, kept: dict | None) -> torch.Tensor:
        """The base model's last hidden state, blocks before ``start`` skipped (``first`` enters block ``start``);
        the boundaries it passes are stored in ``kept`` unless it is None."""
        hooks = []
        try:
            for index, block in enumerate(blocks(self.model)):
                if index == start and start > 0:
                    hooks.append(block.register_forward_pre_hook(swap_input(first), with_kwargs=True))
                elif index > start and self.stores(index) and kept is not None:
                    hooks.append(block.register_forward_pre_hook(capture_input(kept, index), with_kwargs=True))
            if kept is not None:
                hooks.append(final_norm(self.model).register_forward_pre_hook(capture_input(kept, self.n_blocks),
                                                                              with_kwargs=True))
            with BlocksRemoved(self.model, range(start)):
                return self.model.base_model(input_ids=batch.to(self.model.device)).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()

    @torch.inference_mode()
    def final_hidden(self, model: nn.Module, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``perplexity.final_hidden`` with prefix reuse: final hidden states of positions 0..L-2, (B, L-1, d)."""
        if model is not self.model or len(blocks(model)) != self.n_blocks:
            raise EvopruneError("PrefixScorer scores its pruner's model, with all its blocks.")
        count_forward(dtype, batch.numel())  # as perplexity.final_hidden: the tokens scored, skipped blocks or not
        key, state = batch_key(batch, dtype), self.state()
        start, source = self.best_source(key, state)
        kept = {b: t for b, t in self.entries[source].items() if b <= start} if source else {}
        store = None  # the new genome's boundaries, when they fit the budget
        with autocast(model, dtype):
            if start == self.n_blocks:  # the very genome: only the final norm runs
                hidden = final_norm(model)(kept[start])
            else:
                store = kept if self.make_room(batch, start, source) else None
                hidden = self.run_from(batch, start, kept.get(start), store)
        self.blocks_run += self.n_blocks - start
        self.blocks_total += self.n_blocks
        if store is not None:
            self.remember((key, state), store, source)
        elif source is not None:
            self.entries.move_to_end(source)
        return hidden[:, :-1]

    @property
    def saved_fraction(self) -> float:
        """Share of block forwards skipped so far."""
        return 1 - self.blocks_run / self.blocks_total if self.blocks_total else 0.0
