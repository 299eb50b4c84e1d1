"""A deterministic word tokenizer for task instructions.

Text is lower-cased and stripped of punctuation as GR00T does before its chat template, split
on whitespace, and each word is hashed (crc32, stable across processes and machines, unlike
Python's `hash`) into `[FIRST_WORD_ID, vocab_size)`. Every sequence starts with BOS so that an
empty instruction still has one unmasked token. Id 0 is padding.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

PAD_ID = 0
BOS_ID = 1
FIRST_WORD_ID = 2
DEFAULT_VOCAB_SIZE = 1024

_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize_text(text: str) -> str:
    return " ".join(_PUNCTUATION.sub("", text.lower()).split())


def word_id(word: str, vocab_size: int) -> int:
    return FIRST_WORD_ID + zlib.crc32(word.encode("utf-8")) % (vocab_size - FIRST_WORD_ID)


def tokenize(texts: list[str], max_len: int, vocab_size: int = DEFAULT_VOCAB_SIZE) -> np.ndarray:
    """int64 (B, max_len): BOS, word ids, then PAD_ID; words beyond max_len - 1 are dropped."""
    if isinstance(texts, str):
        texts = [texts]
    tokens = np.full((len(texts), max_len), PAD_ID, dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [BOS_ID] + [word_id(w, vocab_size) for w in normalize_text(text).split()]
        ids = ids[:max_len]
        tokens[row, : len(ids)] = ids
    return tokens


def padding_mask(tokens):
    """True where a token is real (not padding); works for numpy arrays and torch tensors."""
    return tokens != PAD_ID
