"""A tiny character-level transformer language model, its corpus and its metrics (chapter 12).

The corpus is three of Shakespeare's tragedies as plain ASCII text (``helpers/assets/
shakespeare_tragedies.txt``; provenance and license in the assets README). :func:`pretrained_lm`
trains the model once with a fixed recipe (well under a minute on one CPU thread) and caches it.
Metrics: mean cross-entropy per character in nats, perplexity ``exp(nll)`` and bits per character
``nll / ln 2``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CORPUS = Path(__file__).resolve().parent / "assets" / "shakespeare_tragedies.txt"
CORPUS_SHA256 = "d34f466b82e0d76702decaaf0ecbb0ef79b2c56d327929973a09d9ee869598b0"
BLOCK = 1024  # characters per block of the interleaved split
SPLIT_PERIOD = 20  # of every 20 blocks: 18 train, 1 validation, 1 test

# The fixed recipes. Changing one changes its cache key, so stale weights are never loaded.
LM_RECIPES: dict[str, dict[str, Any]] = {
    "tinylm": {"d_model": 96, "n_layers": 2, "n_heads": 4, "context": 64, "steps": 400, "batch_size": 32, "lr": 6e-3, "seed": 0},
}

_TEXT_CACHE: dict[str, str] = {}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_corpus() -> str:
    """The shipped corpus as one string (about 430,000 ASCII characters), checked against its sha256."""
    if "corpus" not in _TEXT_CACHE:
        data = CORPUS.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != CORPUS_SHA256:
            raise RuntimeError(f"{CORPUS} has sha256 {digest}, expected {CORPUS_SHA256}: the file is damaged or was changed")
        _TEXT_CACHE["corpus"] = data.decode("ascii")
    return _TEXT_CACHE["corpus"]


def vocabulary() -> str:
    """The sorted characters of the corpus (65 of them: newline, space, punctuation, letters)."""
    return "".join(sorted(set(load_corpus())))


def encode(text: str) -> torch.Tensor:
    """Characters -> int64 ids (len(text),) in the corpus vocabulary; raises ValueError on an unknown character."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    index = {c: i for i, c in enumerate(vocabulary())}
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(f"text has characters outside the corpus vocabulary: {unknown[:10]}")
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def decode(ids: torch.Tensor | np.ndarray | list[int]) -> str:
    """int ids -> characters (inverse of :func:`encode`)."""
    vocab = vocabulary()
    return "".join(vocab[int(i)] for i in (ids.tolist() if hasattr(ids, "tolist") else ids))


def split_corpus() -> dict[str, torch.Tensor]:
    """Train / validation / test ids: the text cut into 1,024-character blocks, and of every 20
    consecutive blocks 18 go to train, the 19th to validation and the 20th to test (so all three
    splits sample all three plays). About 390k / 22k / 22k characters."""
    ids = encode(load_corpus())
    parts: dict[str, list[torch.Tensor]] = {"train": [], "validation": [], "test": []}
    for b, start in enumerate(range(0, len(ids), BLOCK)):
        slot = b % SPLIT_PERIOD
        name = "validation" if slot == SPLIT_PERIOD - 2 else "test" if slot == SPLIT_PERIOD - 1 else "train"
        parts[name].append(ids[start : start + BLOCK])
    return {k: torch.cat(v) for k, v in parts.items()}


# ----------------------------------------------------------------------------- the model


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v, o projections (each an nn.Linear, so
    hooks and the weight-only methods see them one by one). (batch, time, d) -> (batch, time, d)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))`` then ``x + fc2(gelu(fc1(ln2(x))))``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyLM(nn.Module):
    """Character-level GPT: token + learned position embeddings, ``n_layers`` blocks, final LayerNorm,
    an output head. ids (batch, time) int64 with time <= context -> logits (batch, time, vocab)."""

    def __init__(
        self, vocab_size: int = 65, d_model: int = 96, n_layers: int = 2, n_heads: int = 4, context: int = 64, d_ff: int | None = None
    ) -> None:
        super().__init__()
        for name, value in {
            "vocab_size": vocab_size,
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "context": context,
        }.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.context = context
        self.config = {
            "vocab_size": vocab_size,
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "context": context,
            "d_ff": d_ff or 4 * d_model,
        }
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff or 4 * d_model) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.context:
            raise ValueError(f"ids must be (batch, time) with time <= {self.context}, got shape {tuple(ids.shape)}")
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def block_linears(model: TinyLM) -> dict[str, nn.Linear]:
    """The nn.Linear layers inside the transformer blocks by name (``blocks.0.attn.q``, ...,
    ``blocks.1.fc2``): the layers that the chapter's methods compress. Embeddings, LayerNorms and
    the output head stay in float32, as in most LLM recipes."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("blocks.")}


# ----------------------------------------------------------------------------- training and metrics


def random_batch(ids: torch.Tensor, batch_size: int, context: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows: inputs (batch, context) and next-character targets (batch, context)."""
    if len(ids) <= context + 1:
        raise ValueError(f"ids has {len(ids)} tokens, need more than context + 1 = {context + 1}")
    starts = torch.randint(0, len(ids) - context - 1, (batch_size,), generator=generator)
    window = torch.stack([ids[s : s + context + 1] for s in starts.tolist()])
    return window[:, :-1], window[:, 1:]


def windows(ids: torch.Tensor, context: int, max_chars: int | None = None, every: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping evaluation windows of the first ``max_chars`` ids: inputs and targets, each
    (n_windows, context); every character after the first of a window is predicted once.
    ``every=k`` keeps windows 0, k, 2k, ... of them: a subset spread over the whole of ``ids``."""
    if max_chars is not None:
        if not isinstance(max_chars, int) or max_chars < context + 1:
            raise ValueError(f"max_chars must be an int > context ({context}), got {max_chars!r}")
        ids = ids[:max_chars]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    n = (len(ids) - 1) // context
    if n < 1:
        raise ValueError(f"ids has {len(ids)} tokens, need at least context + 1 = {context + 1}")
    x = ids[: n * context].view(n, context)
    y = ids[1 : n * context + 1].view(n, context)
    return x[::every], y[::every]


@torch.no_grad()
def lm_nll(model: nn.Module, ids: torch.Tensor, max_chars: int | None = None, batch_size: int = 256, every: int = 1) -> float:
    """Mean next-character cross-entropy (nats) of ``model`` over non-overlapping windows of ``ids``
    (with ``every=k``, over every k-th window: see ``windows``)."""
    context = model.context
    x, y = windows(ids, context, max_chars, every)
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[start : start + batch_size].flatten(), reduction="sum").item()
    model.train(was_training)
    return total / y.numel()


def perplexity(model: nn.Module, ids: torch.Tensor, max_chars: int | None = None, every: int = 1) -> float:
    """``exp(mean nll)``: the effective number of equally likely next characters (arguments as ``lm_nll``)."""
    return math.exp(lm_nll(model, ids, max_chars, every=every))


def bits_per_char(nll_nats: float) -> float:
    """Cross-entropy in bits per character from nats: ``nll / ln 2``."""
    return nll_nats / math.log(2)


def train_lm(
    model: TinyLM,
    ids: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    teacher: nn.Module | None = None,
    T: float = 1.0,
    alpha: float = 1.0,
    parameters: list[torch.nn.Parameter] | None = None,
) -> list[float]:
    """AdamW with a short warm-up and cosine decay on random windows of ``ids``; returns the loss per step.

    With a ``teacher``: per-token logit distillation (chapter 07) ``alpha * kd_loss(T) + (1 - alpha) * CE``
    at every position of every window. ``parameters``: train only these (e.g. LoRA factors).
    """
    from .distillation import kd_loss

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    params = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        x, y = random_batch(ids, batch_size, model.context, generator)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
            kd = kd_loss(logits.flatten(0, 1), teacher_logits.flatten(0, 1), T)
            loss = alpha * kd + (1 - alpha) * loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


def lm_recipe_key(name: str) -> str:
    """A short hash of the recipe, the corpus, the model code and the torch version that names the cache file."""
    import inspect

    source = inspect.getsource(TinyLM) + inspect.getsource(Block) + inspect.getsource(Attention) + inspect.getsource(train_lm)
    blob = json.dumps(LM_RECIPES[name], sort_keys=True) + CORPUS_SHA256 + source + torch.__version__
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def build_lm(name: str = "tinylm") -> TinyLM:
    """An untrained model with the architecture of recipe ``name``."""
    if name not in LM_RECIPES:
        raise ValueError(f"name must be one of {sorted(LM_RECIPES)}, got {name!r}")
    r = LM_RECIPES[name]
    return TinyLM(len(vocabulary()), r["d_model"], r["n_layers"], r["n_heads"], r["context"])


def pretrained_lm(name: str = "tinylm", cache: Path | None = None, verbose: bool = True) -> TinyLM:
    """The tiny LM trained with its fixed recipe on the train split, in eval mode on the CPU.

    The first call trains it (400 steps, about 20 s at one thread on a quiet CPU) inside a forked RNG and caches
    the state_dict under the cache folder; later calls load it with ``torch.load(..., weights_only=True)``.
    """
    if name not in LM_RECIPES:
        raise ValueError(f"name must be one of {sorted(LM_RECIPES)}, got {name!r}")
    from . import cache_dir

    folder = Path(cache) if cache is not None else cache_dir() / "pretrained"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{lm_recipe_key(name)}.pt"
    recipe = LM_RECIPES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = build_lm(name)
        if path.exists():
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                model.eval()
                return model
            except (RuntimeError, EOFError, ValueError, IndexError, pickle.UnpicklingError) as error:  # truncated or foreign file
                if verbose:
                    print(f"cached {path.name} is unreadable ({type(error).__name__}); retraining")
        if verbose:
            print(f"first use of {name!r}: training it with its fixed recipe ({recipe['steps']} steps), then caching it")
        losses = train_lm(model, split_corpus()["train"], recipe["steps"], recipe["batch_size"], recipe["lr"], recipe["seed"])
        if verbose:
            print(f"  final training loss {np.mean(losses[-20:]):.3f} nats/char")
    tmp = path.with_suffix(f".{os.getpid()}.part")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    if verbose:
        print(f"trained {name} and cached it at {path}")
    model.eval()
    return model


@torch.no_grad()
def generate(model: TinyLM, prompt: str, length: int = 200, temperature: float = 0.8, seed: int = 0) -> str:
    """``prompt`` followed by ``length`` sampled characters (sampling at ``temperature``, seeded)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    generator = torch.Generator().manual_seed(seed)
    ids = encode(prompt).unsqueeze(0)
    for _ in range(length):
        logits = model(ids[:, -model.context :])[0, -1] / temperature
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return decode(ids[0])


__all__ = [
    "CORPUS",
    "CORPUS_SHA256",
    "LM_RECIPES",
    "TinyLM",
    "bits_per_char",
    "block_linears",
    "build_lm",
    "decode",
    "encode",
    "generate",
    "lm_nll",
    "load_corpus",
    "perplexity",
    "pretrained_lm",
    "random_batch",
    "split_corpus",
    "train_lm",
    "vocabulary",
    "windows",
]
