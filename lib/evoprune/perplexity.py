"""Perplexity under three protocols.

* ``primary`` (pruning literature, Wanda/SparseGPT): non-overlapping ``seq_len`` windows over the whole split,
  tail dropped, PPL = exp(total NLL / predicted tokens).
* ``sliding`` (Hugging Face perplexity guide): windows of ``seq_len`` every ``stride`` tokens, each scoring
  only the tokens not scored before; the last, shorter window is kept.
* ``study`` (the published GA's notebook): 1024-token windows every 512 tokens, full windows only, 128 of them
  drawn with ``random.seed(365)``; PPL = exp(mean of the per-window mean losses), every position scored.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from evoprune import EvopruneError
from evoprune.models import context_length

PROTOCOLS = ("primary", "sliding", "study")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)  # auto: chosen per machine (``hardware.resolve_dtype``)
STUDY_STRIDE = 512  # the published study's windows start every 512 tokens


_FORWARD_TOKENS: Counter = Counter()  # tokens run through a model by this process, by dtype


def count_forward(dtype: torch.dtype, tokens: int) -> None:
    _FORWARD_TOKENS[str(dtype).removeprefix("torch.")] += int(tokens)


def forward_tokens() -> dict[str, int]:
    """Tokens this process has run through a model (perplexity, fitness, calibration), by dtype."""
    return dict(_FORWARD_TOKENS)


def exp_or_inf(x: float) -> float:
    """exp that gives inf instead of raising for a wrecked model's huge mean loss."""
    return math.exp(x) if x < 700 else math.inf


@dataclass
class Perplexity:
    ppl: float
    n_windows: int
    n_tokens: int  # predicted (scored) tokens
    protocol: str

    def as_dict(self) -> dict:
        return {"ppl": self.ppl, "n_windows": self.n_windows, "n_tokens": self.n_tokens, "protocol": self.protocol}


def get_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise EvopruneError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def windows(ids: torch.Tensor, seq_len: int = 1024, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows, tail dropped: shape (n, seq_len)."""
    n = ids.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise EvopruneError(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}.")
    return ids[: n * seq_len].view(n, seq_len)


def study_windows(ids: torch.Tensor, seq_len: int = 1024, stride: int = STUDY_STRIDE, n: int = 128,
                  seed: int = 365) -> torch.Tensor:
    """The study's windows: full windows every ``stride`` tokens, ``n`` of them sampled with a fixed seed."""
    starts = list(range(0, ids.numel() - seq_len + 1, stride))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(starts, min(n, len(starts))))
    return torch.stack([ids[s: s + seq_len] for s in chosen])


def autocast(model: nn.Module, dtype: torch.dtype):
    """Run in ``dtype`` on a model stored (wholly or partly: ``Pruner.in_dtype``) in another dtype."""
    weight = next(model.parameters())  # the embedding: it sets the residual stream's dtype
    return nullcontext() if dtype == weight.dtype else torch.autocast(weight.device.type, dtype=dtype)


LOGIT_ROWS = 128  # positions per chunk of whole-vocabulary logits: their float32 logits (25 MB) stay in cache
NLL_TILE = (1024, 2048)  # positions x vocabulary entries per LM-head tile of the loss: matmuls of this shape run
                         # near the matmul peak, where a long thin 128 x 49152 one does not in float32


@torch.inference_mode()
def final_hidden(model: nn.Module, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Final hidden states of positions 0..L-2 (those that predict a next token): shape (B, L-1, d). Inference
    mode here too, not only in its callers: KL's dense reference, kept across a generation's stages, would
    otherwise hold the autograd graph of every block (GBs per sample)."""
    count_forward(dtype, batch.numel())
    with autocast(model, dtype):
        return model.base_model(input_ids=batch.to(model.device)).last_hidden_state[:, :-1]


def head_weights(model: nn.Module, dtype: torch.dtype):
    """The LM head's weight and bias, cast to ``dtype`` once per batch rather than per chunk."""
    head = model.get_output_embeddings()
    return head.weight.to(dtype), None if head.bias is None else head.bias.to(dtype)


def chunk_logits(model: nn.Module, hidden: torch.Tensor, dtype: torch.dtype):
    """Yield (first position, float32 logits over the whole vocabulary) for ``LOGIT_ROWS`` flattened positions at
    a time, so that no B x L x vocab tensor is ever formed. Call under inference mode."""
    weight, bias = head_weights(model, dtype)
    flat = hidden.reshape(-1, hidden.shape[-1])
    for start in range(0, len(flat), LOGIT_ROWS):
        yield start, F.linear(flat[start: start + LOGIT_ROWS].to(dtype), weight, bias).float()


def head_nll(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """NLL of each target given the final hidden states, flattened: shape (positions,), float32. Logits are formed
    one ``NLL_TILE`` at a time (in ``dtype``, then float32, as for ``chunk_logits``); each tile's log-sum-exp
    is combined across the vocabulary by one more log-sum-exp, equal to the whole-row one up to float32
    rounding. Call under inference mode."""
    weight, bias = head_weights(model, dtype)
    flat = hidden.reshape(-1, hidden.shape[-1])
    rows, cols = NLL_TILE
    nll = torch.empty(len(flat), dtype=torch.float32, device=flat.device)
    for start in range(0, len(flat), rows):
        x, wanted = flat[start: start + rows].to(dtype), targets[start: start + rows]
        target_logit = torch.empty(len(x), dtype=torch.float32, device=flat.device)
        tile_lse = []
        for first in range(0, len(weight), cols):
            logits = F.linear(x, weight[first: first + cols],
                              None if bias is None else bias[first: first + cols]).float()
            tile_lse.append(torch.logsumexp(logits, dim=1))
            here = ((wanted >= first) & (wanted < first + logits.shape[1])).nonzero().squeeze(1)
            target_logit[here] = logits[here, wanted[here] - first]
        nll[start: start + len(x)] = torch.logsumexp(torch.stack(tile_lse, dim=1), dim=1) - target_logit
    return nll


@torch.inference_mode()
def token_nll(model: nn.Module, batch: torch.Tensor, dtype: torch.dtype = torch.float32,
              hidden=final_hidden) -> torch.Tensor:
    """Negative log-likelihood of every next token: shape (B, L-1), float32. ``hidden``: how the final hidden
    states are formed (``final_hidden``, or ``prefix.PrefixScorer.final_hidden``, which reuses kept blocks)."""
    targets = batch[:, 1:].reshape(-1).to(model.device)
    return head_nll(model, hidden(model, batch, dtype), targets, dtype).view(len(batch), -1).cpu()


def window_nll(model: nn.Module, wins: torch.Tensor, batch_size: int = 4, dtype: torch.dtype = torch.float32,
               progress: bool = False, hidden=final_hidden) -> torch.Tensor:
    """Per-window NLL of every predicted position: shape (n, L-1)."""
    out = []
    for start in tqdm(range(0, len(wins), batch_size), desc="windows", unit="batch", disable=not progress,
                      leave=False):
        out.append(token_nll(model, wins[start: start + batch_size], dtype, hidden))
    return torch.cat(out)


def primary(model, wins, batch_size=4, dtype=torch.float32, progress=False, hidden=final_hidden) -> Perplexity:
    nll = window_nll(model, wins, batch_size, dtype, progress, hidden).double()
    return Perplexity(exp_or_inf(nll.sum().item() / nll.numel()), len(wins), nll.numel(), "primary")


def study(model, wins, batch_size=4, dtype=torch.float32, progress=False, hidden=final_hidden) -> Perplexity:
    nll = window_nll(model, wins, batch_size, dtype, progress, hidden).double()
    return Perplexity(exp_or_inf(nll.mean(dim=1).mean().item()), len(wins), nll.numel(), "study")


def sliding(model, ids: torch.Tensor, seq_len: int = 1024, stride: int = STUDY_STRIDE, dtype=torch.float32,
            progress: bool = False) -> Perplexity:
    """The Hugging Face guide's strided evaluation, counting exactly the tokens each window scores."""
    total, count, n_windows, prev_end = 0.0, 0, 0, 0
    for begin in tqdm(range(0, ids.numel(), stride), desc="windows", disable=not progress, leave=False):
        end = min(begin + seq_len, ids.numel())
        window = ids[begin:end]
        first_target = max(1, len(window) - (end - prev_end))  # tokens before it were scored already
        nll = token_nll(model, window.unsqueeze(0), dtype)[0, first_target - 1:].double()
        total, count, n_windows, prev_end = total + nll.sum().item(), count + nll.numel(), n_windows + 1, end
        if end == ids.numel():
            break
    return Perplexity(exp_or_inf(total / count), n_windows, count, "sliding")


def check_windows(model, seq_len: int, max_windows: int | None) -> None:
    if max_windows is not None and max_windows < 1:
        raise EvopruneError(f"--max-windows {max_windows}: give at least 1 window, or leave it out to use them all.")
    longest = context_length(model)
    if longest is not None and not 2 <= seq_len <= longest:
        raise EvopruneError(f"--seq-len {seq_len}: give 2 to {longest} tokens, the longest context this model "
                            f"takes.")


def measure(model, ids: torch.Tensor, protocol: str = "primary", seq_len: int = 1024,
            max_windows: int | None = None, stride: int = STUDY_STRIDE, batch_size: int = 4,
            dtype: torch.dtype = torch.float32, progress: bool = False) -> Perplexity:
    """Perplexity of ``model`` on token ids under one protocol."""
    check_windows(model, seq_len, max_windows)
    if protocol == "primary":
        return primary(model, windows(ids, seq_len, max_windows), batch_size, dtype, progress)
    if protocol == "study":
        n = 128 if max_windows is None else max_windows
        return study(model, study_windows(ids, seq_len, stride, n), batch_size, dtype, progress)
    if protocol == "sliding":
        if max_windows is not None:
            ids = ids[: max_windows * stride + seq_len]
        return sliding(model, ids, seq_len, stride, dtype, progress)
    raise EvopruneError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}.")
