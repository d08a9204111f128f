"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"), generated in the project.

A sequence of length T is `n` key-value pairs, then a query region of the same T where each of the `n` keys
comes back once, in a random order and at random places, each followed by its value:

    k1 v1 k2 v2 ... kn vn | f f k3 v3 f k1 v1 f f ... f      (f: a filler token)

The model is scored only where it must recall: at each value token after a query key (labels there, -100
everywhere else, so HF's shifted loss is the prediction made at the query key). Keys and values come from
disjoint ranges of the vocabulary, so a value can never be mistaken for a key. As in Zoology, the value also
stands in the input after its query (it is what a next-token model reads), but it is never a label earlier.

Query positions are uniform over the query region's two-token slots (Zoology draws power-law gaps, which
puts most queries near their pairs; uniform slots are the harder, simpler choice). Everything is numpy on
the CPU from one seed: the same seed gives the same sequences on every machine; held-out sets use other seeds.
"""
from __future__ import annotations

import numpy as np
import torch

VOCAB = 8192  # the (and the bundled tokenizer's) size; `vocab=` makes smaller ones for quick tests
FILLER = 1  # the bundled tokenizer's <|pad|> id; any id outside the key and value ranges would do
FIRST_KEY = 16  # ids below 16 are left for special tokens
IGNORE = -100  # HF's ignore index


def key_range(vocab: int = VOCAB) -> tuple[int, int]:
    return FIRST_KEY, vocab // 2


def value_range(vocab: int = VOCAB) -> tuple[int, int]:
    return vocab // 2, vocab  # disjoint from the keys


def check_shape(seq_len: int, num_pairs: int, vocab: int = VOCAB) -> None:
    # the pairs take 2n tokens; the query region needs at least n two-token slots
    if num_pairs < 1 or 4 * num_pairs > seq_len:
        raise ValueError(f"MQAR seq_len {seq_len} cannot hold {num_pairs} pairs and their queries "
                         f"(needs seq_len >= 4 * num_pairs)")
    lo, hi = key_range(vocab)
    if num_pairs > hi - lo:
        raise ValueError(f"{num_pairs} pairs need more distinct keys than vocab {vocab} holds ({hi - lo})")


def _subset(rng: np.random.Generator, rows: int, pool: int, n: int) -> np.ndarray:
    """`rows` random n-subsets of range(pool), in random order (argpartition of uniform noise)."""
    noise = rng.random((rows, pool))
    idx = np.argpartition(noise, n - 1, axis=1)[:, :n] if n < pool else np.argsort(noise, axis=1)
    perm = np.argsort(rng.random((rows, n)), axis=1)  # argpartition's order is not random: shuffle
    return np.take_along_axis(idx, perm, axis=1)


def generate(num_seqs: int, seq_len: int, num_pairs: int, seed: int | list[int],
             vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), both int64 [num_seqs, seq_len]; labels are -100 except at the query values.
    `seed`: an int or a list of ints (numpy's SeedSequence), e.g. [stream, step]."""
    check_shape(seq_len, num_pairs, vocab)
    rng = np.random.default_rng(seed)
    B, n = num_seqs, num_pairs
    (klo, khi), (vlo, vhi) = key_range(vocab), value_range(vocab)
    keys = klo + _subset(rng, B, khi - klo, n)  # distinct keys per sequence
    values = rng.integers(vlo, vhi, size=(B, n))  # values may repeat, as in Zoology
    x = np.full((B, seq_len), FILLER, dtype=np.int64)
    x[:, 0:2 * n:2], x[:, 1:2 * n:2] = keys, values
    labels = np.full((B, seq_len), IGNORE, dtype=np.int64)
    # query region: tokens [2n, seq_len), cut into two-token slots; each key takes one slot
    slots = (seq_len - 2 * n) // 2
    slot = _subset(rng, B, slots, n)  # slot[b, j]: where pair j's key is asked again
    pos = 2 * n + 2 * slot  # query key position
    rows = np.arange(B)[:, None]
    x[rows, pos], x[rows, pos + 1] = keys, values
    labels[rows, pos + 1] = values
    return torch.from_numpy(x), torch.from_numpy(labels)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of labelled positions where predictions (token ids at the same positions as labels) match."""
    mask = labels != IGNORE
    return float((predictions[mask] == labels[mask]).float().mean())


def shift_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] bool: the positions whose output predicts a label (the query keys)."""
    return labels[:, 1:] != IGNORE


def model_predictions(logits: torch.Tensor) -> torch.Tensor:
    """Token ids aligned with labels: HF's causal LM predicts labels[:, t] from logits[:, t - 1]."""
    pred = logits.argmax(-1)
    out = torch.full_like(pred, IGNORE - 1)  # position 0 is never predicted (and never labelled)
    out[:, 1:] = pred[:, :-1]
    return out


def oracle_predictions(input_ids: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """What a perfect recall model predicts: after each key, the value paired with it in the first 2n
    tokens (looked up in a dict, independently of how `generate` placed things). Aligned with labels."""
    out = torch.full_like(input_ids, IGNORE - 1)
    for b, row in enumerate(input_ids.tolist()):
        table = {row[2 * j]: row[2 * j + 1] for j in range(num_pairs)}
        for t in range(2 * num_pairs, len(row) - 1):
            if row[t] in table:
                out[b, t + 1] = table[row[t]]
    return out
