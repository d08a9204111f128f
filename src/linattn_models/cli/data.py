"""Training data: the built-in default corpus (the Python standard library's own source) and local files.

Everything here works offline: the default corpus is gathered at run time from the interpreter's standard
library directory, and user data comes from local text / JSONL files read through ``datasets``.
Where ``datasets`` is not installed (a minimal GPU image, say), a small in-memory fallback (``Table``)
serves the default corpus and text / JSONL files, so the training script still runs.
``training_blocks`` is the training script's data step: documents -> packed blocks, and their unigram baseline.
"""
from __future__ import annotations

import math
import os
import sysconfig
import time
import zlib
from pathlib import Path
from typing import Iterator

from linattn_models import env
from linattn_models.cli import UsageError

# Directories of the standard library that are not part of the corpus.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
              "encodings"}  # encodings: generated codec tables, not prose or code
_MAX_FILE_BYTES = 1_000_000  # skip huge generated files


def have_datasets() -> bool:
    if env.flag("LINATTN_NO_DATASETS"):  # for testing the fallback
        return False
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


class Table:
    """The few ``datasets.Dataset`` methods the training script uses, over an in-memory list of rows."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    @classmethod
    def from_list(cls, rows):
        return cls(list(rows))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, str):
            return [r[i] for r in self.rows]
        return self.rows[i]

    @property
    def column_names(self):
        return list(self.rows[0]) if self.rows else []

    def select(self, indices):
        return Table([self.rows[i] for i in indices])

    def select_columns(self, cols):
        return Table([{c: r[c] for c in cols} for r in self.rows])

    def train_test_split(self, test_size, seed=0):
        import random

        idx = list(range(len(self.rows)))
        random.Random(seed).shuffle(idx)
        n_test = max(1, round(test_size * len(idx))) if isinstance(test_size, float) else int(test_size)
        return {"train": self.select(sorted(idx[n_test:])), "test": self.select(sorted(idx[:n_test]))}

    def iter(self, batch_size):
        for i in range(0, len(self.rows), batch_size):
            chunk = self.rows[i:i + batch_size]
            yield {c: [r[c] for r in chunk] for c in (chunk[0] if chunk else {})}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Sorted list of the standard library's ``.py`` files (tests and third-party packages excluded)."""
    root = Path(root) if root is not None else stdlib_dir()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                p = Path(dirpath) / name
                try:
                    if p.stat().st_size <= _MAX_FILE_BYTES:
                        out.append(p)
                except OSError:
                    pass
    out.sort()
    return out


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def is_eval_file(rel_path: str, eval_percent: int = 5) -> bool:
    """Deterministic held-out split by file: the same files are held out on every machine and run."""
    return zlib.crc32(rel_path.encode("utf-8")) % 100 < eval_percent


def iter_stdlib_texts(root=None) -> Iterator[tuple[str, str]]:
    """Yield ``(relative_path, text)`` for every readable standard-library source file."""
    root = Path(root) if root is not None else stdlib_dir()
    for p in stdlib_files(root):
        text = read_text(p)
        if text and text.strip():
            yield p.relative_to(root).as_posix(), text


def stdlib_datasets(eval_percent: int = 5, max_train_docs: int | None = None, max_eval_docs: int | None = None):
    """The default corpus as a ``datasets.DatasetDict`` with ``train`` and ``validation`` splits.

    One document per source file (code, comments and docstrings as they are); files are held out by a
    hash of their path, so train and validation never share a file.
    """
    train, evals = [], []
    for rel, text in iter_stdlib_texts():
        (evals if is_eval_file(rel, eval_percent) else train).append({"text": text, "source": rel})
    if max_train_docs is not None:
        train = train[:max_train_docs]
    if max_eval_docs is not None:
        evals = evals[:max_eval_docs]
    if not have_datasets():
        return {"train": Table(train), "validation": Table(evals)}
    from datasets import Dataset, DatasetDict

    return DatasetDict({"train": Dataset.from_list(train), "validation": Dataset.from_list(evals)})


def _builder_for(paths: list[str]) -> str:
    kinds = {{".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(Path(p).suffix.lower(),
                                                                                          "text") for p in paths}
    if len(kinds) > 1:
        raise ValueError(f"mixed file types in one data set ({sorted(kinds)}): pass one kind at a time")
    return kinds.pop()


_DATA_SUFFIXES = {".txt", ".md", ".py", ".json", ".jsonl", ".parquet", ".csv", ".text", ".rst"}


class DataFileError(UsageError):
    """A --data / --eval-data path that does not exist, holds no data files, or is not text."""


def _expand(paths: list[str], flag: str = "--data") -> list[str]:
    out = []
    for p in paths:
        q = Path(p)
        if q.is_dir():
            out += sorted(str(f) for f in q.rglob("*") if f.is_file() and f.suffix.lower() in _DATA_SUFFIXES)
        elif q.exists():
            out.append(p)
        else:
            raise DataFileError(f"{flag} {p}: no such file or directory")
    if not out:
        raise DataFileError(f"{flag} {' '.join(paths)}: no data files found (expected files or directories "
                            f"holding {'/'.join(sorted(_DATA_SUFFIXES))} files)")
    return out


def _not_text(path: str, limit: int | None = None) -> str | None:
    """Why ``path`` is not UTF-8 text (a NUL byte or an invalid byte sequence in its first ``limit`` bytes,
    all of it when None), or None when it reads as UTF-8 text."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while limit is None or offset < limit:
                chunk = f.read(1 << 16 if limit is None else min(1 << 16, limit - offset))
                if not chunk:
                    dec.decode(b"", final=True)
                    return None
                nul = chunk.find(b"\0")
                if nul >= 0:
                    return f"a NUL byte at offset {offset + nul}"
                try:
                    dec.decode(chunk, final=False)
                except UnicodeDecodeError as e:
                    return f"byte 0x{chunk[e.start]:02x} at offset {offset + e.start} is not UTF-8"
                offset += len(chunk)
    except UnicodeDecodeError:
        return "it ends inside a UTF-8 character"
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    return None


def _text_error(flag: str, path: str, why: str) -> DataFileError:
    return DataFileError(f"{flag} file {path} is not text ({why}): expected UTF-8 text (.txt/.md/.py..., "
                         ".json/.jsonl/.csv with the --text-field column, or .parquet)")


def data_files(paths: list[str], flag: str = "--data", sniff_bytes: int = 4096) -> list[str]:
    """The data files behind ``paths`` (directories expanded), checked before any heavy work: each path
    exists, there is at least one file, one kind of file, and each text-like file starts as UTF-8 text
    (its first ``sniff_bytes`` bytes; a file that turns binary further on is named when loading fails)."""
    files = _expand(paths, flag)
    try:
        builder = _builder_for(files)
    except ValueError as e:
        raise DataFileError(f"{flag}: {e}") from None
    if builder != "parquet":
        for f in files:
            why = _not_text(f, sniff_bytes)
            if why:
                raise _text_error(flag, f, why)
    return files


def _raise_if_not_text(files: list[str], builder: str, flag: str, cause: BaseException) -> None:
    if builder == "parquet":
        return
    for f in files:
        why = _not_text(f)
        if why:
            raise _text_error(flag, f, why) from cause


def load_local_dataset(paths: list[str], text_field: str = "text", sample_by: str = "document",
                       flag: str = "--data"):
    """Load local files through ``datasets`` (no download): .txt-like files with the ``text`` builder
    (one example per ``sample_by``: document, paragraph or line), .json/.jsonl/.csv/.parquet files by
    their builder, keeping only ``text_field`` (renamed to ``text``). A path that does not exist or a file
    that is not text raises DataFileError naming it (``flag`` is the option it came from)."""
    files = data_files(paths, flag)
    builder = _builder_for(files)
    if not have_datasets():
        try:
            return _load_local_fallback(files, builder, text_field, sample_by)
        except UnicodeDecodeError as e:
            _raise_if_not_text(files, builder, flag, e)
            raise
    from datasets import load_dataset

    kwargs = {}
    if builder == "text":
        kwargs["sample_by"] = sample_by
        if sample_by == "line":
            kwargs["keep_linebreaks"] = True
    try:
        ds = load_dataset(builder, data_files={"train": files}, split="train", **kwargs)
    except Exception as e:  # datasets wraps a decoding error in DatasetGenerationError: name the file
        _raise_if_not_text(files, builder, flag, e)
        raise
    if text_field not in ds.column_names:
        raise DataFileError(f"--text-field {text_field}: no such field in {files[0]} (columns: "
                            f"{', '.join(ds.column_names)})")
    if text_field != "text":
        if "text" in ds.column_names:
            ds = ds.remove_columns("text")
        ds = ds.rename_column(text_field, "text")
    return ds.select_columns(["text"])


def _load_local_fallback(files, builder, text_field, sample_by):
    import json

    rows = []
    for f in files:
        if builder == "json":
            with open(f, encoding="utf-8") as fh:
                head = fh.read(1).strip()
                fh.seek(0)
                recs = json.load(fh) if head == "[" else [json.loads(line) for line in fh if line.strip()]
            for r in recs:
                if text_field not in r:
                    raise DataFileError(f"--text-field {text_field}: no such field in {f} (fields: "
                                        f"{', '.join(r)})")
                rows.append({"text": r[text_field]})
        elif builder == "text":
            text = Path(f).read_text(encoding="utf-8")
            if sample_by == "document":
                parts = [text]
            elif sample_by == "paragraph":
                parts = [p for p in text.split("\n\n") if p.strip()]
            else:
                parts = text.splitlines(keepends=True)
            rows += [{"text": p} for p in parts]
        else:
            raise SystemExit(f"{builder} files need the `datasets` package (pip install datasets)")
    return Table(rows)


def pack_dataset(ds, tokenizer, block_size: int, num_proc: int | None = None, desc: str = "data"):
    """Tokenize, append EOS after each document, concatenate and cut into ``block_size`` blocks
    (the remainder at the end is dropped). Returns a dataset with ``input_ids`` and ``labels``."""
    eos = tokenizer.eos_token_id

    def tok(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids]}

    def group(batch):
        flat = [t for x in batch["input_ids"] for t in x]
        n = (len(flat) // block_size) * block_size
        blocks = [flat[i:i + block_size] for i in range(0, n, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    if isinstance(ds, Table):
        flat, blocks = [], []
        for batch in ds.iter(512):
            for x in tok(batch)["input_ids"]:
                flat.extend(x)
            n = (len(flat) // block_size) * block_size
            blocks += [flat[i:i + block_size] for i in range(0, n, block_size)]
            flat = flat[n:]
        return Table([{"input_ids": b, "labels": list(b)} for b in blocks])
    cols = ds.column_names
    ds = ds.map(tok, batched=True, remove_columns=cols, num_proc=num_proc, desc=f"Tokenizing {desc}")
    ds = ds.map(group, batched=True, batch_size=1000, num_proc=num_proc, desc=f"Packing {desc} into blocks of {block_size}")
    return ds


def unigram_baseline(train_ds, eval_ds, vocab_size: int) -> tuple[float, int]:
    """Cross-entropy (nats/token) of the eval tokens under the unigram distribution of the train tokens
    (add-one smoothed): what a model that ignores context would score. Returns (entropy, train tokens)."""
    import numpy as np

    counts = np.zeros(vocab_size, dtype=np.float64)
    n_train = 0
    for batch in train_ds.iter(batch_size=2048):
        a = np.asarray(batch["input_ids"], dtype=np.int64).ravel()
        counts += np.bincount(a, minlength=vocab_size)[:vocab_size]
        n_train += a.size
    logp = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    total, n = 0.0, 0
    for batch in eval_ds.iter(batch_size=2048):
        a = np.asarray(batch["input_ids"], dtype=np.int64)[:, 1:].ravel()  # the positions the model predicts
        total += -logp[a].sum()
        n += a.size
    return total / max(n, 1), n_train


def _documents(args, train_files, eval_files):
    """The train and eval documents: --data (with --eval-data, or a held-out --eval-fraction of it), else
    the standard library source. Returns (train, eval, what they are)."""
    if args.data:
        raw_train = load_local_dataset(train_files, args.text_field, args.sample_by, "--data")
        if args.eval_data:
            raw_eval = load_local_dataset(eval_files, args.text_field, args.sample_by, "--eval-data")
        else:
            if len(raw_train) < 2:
                raise UsageError(f"--data has {len(raw_train)} document(s), need at least 2 to hold out an eval "
                                 "split: pass --eval-data, or --sample-by line/paragraph")
            split = raw_train.train_test_split(test_size=args.eval_fraction, seed=args.seed)
            raw_train, raw_eval = split["train"], split["test"]
        return raw_train, raw_eval, f"local files {args.data}"
    dd = stdlib_datasets()
    raw_train, raw_eval = dd["train"].select_columns(["text"]), dd["validation"].select_columns(["text"])
    return raw_train, raw_eval, "the Python standard library source (built-in default, held-out files for eval)"


def training_blocks(args, train_files, eval_files, tokenizer, say):
    """The data step: load the documents, pack them into --block-size blocks (at most --max-eval-blocks for
    eval), and print their sizes and the unigram baseline. Returns (train blocks, eval blocks, baseline)."""
    data_t0 = time.time()
    raw_train, raw_eval, data_desc = _documents(args, train_files, eval_files)
    if args.max_train_docs:
        raw_train = raw_train.select(range(min(args.max_train_docs, len(raw_train))))
    train_ds = pack_dataset(raw_train, tokenizer, args.block_size, args.num_proc, "train")
    eval_ds = pack_dataset(raw_eval, tokenizer, args.block_size, args.num_proc, "eval")
    if len(eval_ds) == 0 or len(train_ds) == 0:
        raise UsageError(f"--block-size {args.block_size}: not enough text for one block of that many tokens "
                         f"(train blocks {len(train_ds)}, eval blocks {len(eval_ds)}); lower --block-size")
    if args.max_eval_blocks and len(eval_ds) > args.max_eval_blocks:
        # an evenly spread subset, the same one at every evaluation
        step = len(eval_ds) / args.max_eval_blocks
        eval_ds = eval_ds.select([int(i * step) for i in range(args.max_eval_blocks)])
    baseline, n_train_tokens = unigram_baseline(train_ds, eval_ds, len(tokenizer))
    say(f"data: {data_desc}\n  train: {len(raw_train)} docs -> {len(train_ds)} blocks x {args.block_size} "
        f"= {n_train_tokens / 1e6:.2f} M tokens\n  eval:  {len(raw_eval)} docs -> {len(eval_ds)} blocks used "
        f"({time.time() - data_t0:.1f}s)\n  unigram baseline on the eval tokens: {baseline:.3f} nats/token "
        f"(perplexity {math.exp(baseline):.1f})")
    return train_ds, eval_ds, baseline
