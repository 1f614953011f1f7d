"""The tiny character-level LM: shipped corpus (checksum), split, model shapes, metrics, cached training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import tinylm as T


def test_corpus_checksum_size_and_vocabulary() -> None:
    assert T.sha256_of(T.CORPUS) == T.CORPUS_SHA256
    assert 300_000 < T.CORPUS.stat().st_size < 1_000_000
    text = T.load_corpus()
    assert text.startswith("Macbeth") and "HAMLET:" in text and "KING LEAR:" in text
    assert len(T.vocabulary()) == 65 and T.vocabulary()[0] == "\n"


def test_damaged_corpus_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "corpus.txt"
    bad.write_text("not the corpus")
    monkeypatch.setattr(T, "CORPUS", bad)
    monkeypatch.setattr(T, "_TEXT_CACHE", {})
    with pytest.raises(RuntimeError, match="sha256"):
        T.load_corpus()


def test_encode_decode_round_trip_and_errors() -> None:
    text = "To be, or not to be: that is the question:\n"
    assert T.decode(T.encode(text)) == text
    with pytest.raises(ValueError, match="vocabulary"):
        T.encode("caf\u00e9")
    with pytest.raises(TypeError, match="text"):
        T.encode(42)  # type: ignore[arg-type]


def test_split_is_disjoint_interleaved_and_covers_the_text() -> None:
    parts = T.split_corpus()
    sizes = {k: len(v) for k, v in parts.items()}
    assert sum(sizes.values()) == len(T.load_corpus())
    assert sizes["validation"] == sizes["test"] == 21 * 1024
    assert sizes["train"] > 15 * sizes["validation"]
    assert T.decode(parts["validation"][:1024]) == T.load_corpus()[18 * 1024 : 19 * 1024]


def test_model_shapes_causality_and_errors() -> None:
    torch.manual_seed(0)
    model = T.TinyLM(65, 32, 2, 4, 16).eval()
    ids = torch.randint(0, 65, (3, 16))
    logits = model(ids)
    assert logits.shape == (3, 16, 65)
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 65
    assert torch.allclose(model(changed)[:, :10], logits[:, :10], atol=1e-6), "a later token must not change earlier logits"
    assert not torch.allclose(model(changed)[:, 10:], logits[:, 10:])
    with pytest.raises(ValueError, match="time"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="d_model"):
        T.TinyLM(65, 30, 1, 4, 16)
    with pytest.raises(ValueError, match="context"):
        T.TinyLM(65, 32, 1, 4, 0)
    assert set(T.block_linears(model)) == {
        f"blocks.{i}.{n}" for i in range(2) for n in ("attn.q", "attn.k", "attn.v", "attn.o", "fc1", "fc2")
    }


def test_windows_and_metrics_agree_with_a_manual_loop() -> None:
    ids = torch.arange(50) % 65
    x, y = T.windows(ids, 8)
    assert x.shape == y.shape == (6, 8) and torch.equal(y[:, :-1], x[:, 1:])
    with pytest.raises(ValueError, match="max_chars"):
        T.windows(ids, 8, max_chars=5)
    x2, y2 = T.windows(ids, 8, every=2)
    assert torch.equal(x2, x[::2]) and torch.equal(y2, y[::2]) and len(x2) == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="every"):
            T.windows(ids, 8, every=bad)
    torch.manual_seed(1)
    model = T.TinyLM(65, 16, 1, 2, 8).eval()
    with torch.no_grad():
        manual = sum(torch.nn.functional.cross_entropy(model(x[i : i + 1])[0], y[i], reduction="sum").item() for i in range(6)) / 48
    nll = T.lm_nll(model, ids)
    assert nll == pytest.approx(manual, rel=1e-5)
    assert T.perplexity(model, ids) == pytest.approx(math.exp(nll), rel=1e-9)
    manual_every = sum(torch.nn.functional.cross_entropy(model(x[i : i + 1])[0], y[i], reduction="sum").item() for i in (0, 3)) / 16
    assert T.lm_nll(model, ids, every=3) == pytest.approx(manual_every, rel=1e-5)
    assert T.bits_per_char(math.log(2)) == pytest.approx(1.0)
    assert nll == pytest.approx(math.log(65), abs=0.3)  # an untrained model is near uniform


def test_train_lm_lowers_the_loss_and_distillation_runs() -> None:
    ids = T.split_corpus()["train"][:20_000]
    torch.manual_seed(0)
    model = T.TinyLM(65, 16, 1, 2, 16)
    losses = T.train_lm(model, ids, 60, batch_size=8, lr=1e-2, seed=0)
    assert sum(losses[-10:]) / 10 < losses[0] - 0.5
    student = T.TinyLM(65, 8, 1, 2, 16)
    kd = T.train_lm(student, ids, 5, batch_size=4, teacher=model, T=2.0, alpha=0.5)
    assert len(kd) == 5 and all(math.isfinite(v) for v in kd)
    with pytest.raises(ValueError, match="steps"):
        T.train_lm(model, ids, 0)
    with pytest.raises(ValueError, match="alpha"):
        T.train_lm(model, ids, 1, alpha=1.5)


def test_pretrained_lm_caches_and_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(T.LM_RECIPES, "tinylm", dict(T.LM_RECIPES["tinylm"], steps=3, d_model=16, n_heads=2, n_layers=1))
    state = torch.random.get_rng_state()
    first = T.pretrained_lm(cache=tmp_path, verbose=False)
    assert torch.equal(torch.random.get_rng_state(), state), "training must not touch the caller's RNG"
    files = list(tmp_path.glob("tinylm-*.pt"))
    assert len(files) == 1
    again = T.pretrained_lm(cache=tmp_path, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    files[0].write_bytes(b"truncated")
    T.pretrained_lm(cache=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="name"):
        T.pretrained_lm("gpt2")


def test_generate_is_seeded() -> None:
    torch.manual_seed(0)
    model = T.TinyLM(65, 16, 1, 2, 16).eval()
    a = T.generate(model, "ROMEO:", 20, seed=3)
    assert a.startswith("ROMEO:") and len(a) == 26 and a == T.generate(model, "ROMEO:", 20, seed=3)
    with pytest.raises(ValueError, match="temperature"):
        T.generate(model, "A", 1, temperature=0)
