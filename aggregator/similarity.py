"""Text fingerprints for near-duplicate detection: MinHash signatures with LSH bands. Pure.

A text becomes the set of its word pairs (shingles; pairs found more edited
copies than triples at no cost in precision on the labelled fixtures). Its signature holds,
for each of 64 multiply-shift hash functions, the smallest hash over those shingles; the
share of positions where two signatures agree estimates the Jaccard
similarity of the two shingle sets. Signatures are cut into 16 bands of 4:
two texts with Jaccard similarity 0.7 share at least one band with
probability 0.99 (0.5: 0.64; 0.2: 0.03), so candidates come from an indexed
lookup per band, at a cost that does not grow with the store.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence
from itertools import chain

import numpy as np

PERMUTATIONS = 64
BANDS = 16
ROWS = PERMUTATIONS // BANDS
SHINGLE = 2
_WORD = re.compile(r"\w+", re.UNICODE)
_MARKS = re.compile(r"[\u0300-\u036f]")  # one at a time: faster than runs
_RANDOM = np.random.default_rng(20261126)
_A = _RANDOM.integers(1, 1 << 63, size=PERMUTATIONS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_B = _RANDOM.integers(0, 1 << 63, size=PERMUTATIONS, dtype=np.uint64)
_SHIFT = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_BATCH_TOKENS = 8192  # words hashed together, at most: a table of 8,192 x 64 values is 4 MiB
_SIGNATURE_BYTES = 4 * PERMUTATIONS
_BAND_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], dtype=np.uint64)
_BAND_NUMBERS = np.arange(BANDS, dtype=np.uint64) << np.uint64(32)


class _Vocabulary(dict[str, int]):
    """The 32-bit hash of every word seen, kept while the process lives (news repeats its words);
    emptied when it grows past ``limit`` words."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, word: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        value = self[word] = zlib.crc32(word.encode("utf-8"))
        return value


_HASHES = _Vocabulary(200_000)


def words(text: str) -> list[str]:
    """Lower-cased words with accents folded, so spelling variants of a text agree."""
    folded = text.casefold()
    if not folded.isascii():
        folded = _MARKS.sub("", unicodedata.normalize("NFKD", folded))
    return _WORD.findall(folded)


def shingles(tokens: list[str]) -> np.ndarray:
    """One 32-bit hash per pair of consecutive words (per word for a one-word text)."""
    ids = np.fromiter(map(_HASHES.__getitem__, tokens), dtype=np.uint64, count=len(tokens))
    if len(ids) < SHINGLE:
        return np.unique(ids)
    with np.errstate(over="ignore"):
        combined = ids[:-1] * np.uint64(0x9E3779B1) + ids[1:]
    return np.unique((combined ^ (combined >> np.uint64(29))) & _LOW32)


def signatures(texts: Sequence[list[str]]) -> list[np.ndarray | None]:
    """The MinHash signature of each text (64 values below 2**32; None for a text without words), computed
    together: a feed's entries cost a few array operations instead of a dozen each. Shingles repeated in a text do not change its minimum, so none are dropped."""
    found: list[np.ndarray | None] = [None] * len(texts)
    batch: list[int] = []
    size = 0
    for index, tokens in enumerate(texts):
        if len(tokens) > _BATCH_TOKENS:
            found[index] = _long_signature(tokens)
            continue
        if size + len(tokens) > _BATCH_TOKENS:
            _sign(texts, batch, found)
            batch, size = [], 0
        if tokens:
            batch.append(index)
            size += len(tokens)
    if batch:
        _sign(texts, batch, found)
    return found


def _long_signature(tokens: list[str]) -> np.ndarray:
    """A long text's signature, its distinct shingles hashed ``_BATCH_TOKENS`` at a time."""
    hashed = shingles(tokens)
    minimum = np.full(PERMUTATIONS, np.iinfo(np.uint64).max, dtype=np.uint64)
    for start in range(0, len(hashed), _BATCH_TOKENS):
        np.minimum(minimum, _hashed(hashed[start : start + _BATCH_TOKENS]).min(axis=0), out=minimum)
    return minimum.astype(np.uint32)


def _hashed(values: np.ndarray) -> np.ndarray:
    """Each value under each of the ``PERMUTATIONS`` hash functions, one row per value. Computed in place:
    a shift that makes a new array of this size costs ten times the multiplication."""
    table = np.multiply.outer(values, _A)
    table += _B
    table >>= _SHIFT
    return table


def _sign(texts: Sequence[list[str]], batch: list[int], found: list[np.ndarray | None]) -> None:
    lengths = np.fromiter((len(texts[i]) for i in batch), dtype=np.int64, count=len(batch))
    total = int(lengths.sum())
    ids = np.fromiter(map(_HASHES.__getitem__, chain.from_iterable(texts[i] for i in batch)), dtype=np.uint64, count=total)
    ends = np.cumsum(lengths)
    last = np.zeros(total, dtype=bool)
    last[ends - 1] = True  # the last word of a text starts no pair
    with np.errstate(over="ignore"):
        combined = ids[:-1] * np.uint64(0x9E3779B1) + ids[1:]
    pairs = np.append((combined ^ (combined >> np.uint64(29))) & _LOW32, np.uint64(0))
    single = np.repeat(lengths == 1, lengths)  # a one-word text is its word
    keep = ~last | single
    hashed = np.where(single, ids, pairs)[keep]
    starts = np.concatenate(([0], np.cumsum(np.maximum(lengths - 1, 1))[:-1]))
    for index, row in zip(batch, np.minimum.reduceat(_hashed(hashed), starts, axis=0).astype(np.uint32), strict=True):
        found[index] = row


def to_bytes(sig: np.ndarray) -> bytes:
    return sig.astype("<u4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<u4")


def band_keys(signature: bytes) -> list[int]:
    """One integer per band of a stored signature (:func:`to_bytes`): the band's number and a 32-bit
    hash of its rows, for a lookup in the band index (which holds them in memory only)."""
    return band_keys_of([signature])[0]


def band_keys_of(signatures: Sequence[bytes]) -> list[list[int]]:
    """:func:`band_keys` of each signature, hashed together (a feed's in a few array operations instead
    of 16 hashes each); none for a blob that is not a signature."""
    whole = [s for s in signatures if len(s) == _SIGNATURE_BYTES]
    if not whole:
        return [[] for _ in signatures]
    rows = np.frombuffer(b"".join(whole), dtype="<u4").reshape(len(whole), BANDS, ROWS).astype(np.uint64)
    rows *= _BAND_MIX
    mixed = rows.sum(axis=2, dtype=np.uint64)  # modulo 2**64
    mixed ^= mixed >> np.uint64(29)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed >>= _SHIFT
    mixed |= _BAND_NUMBERS
    keys = iter(mixed.tolist())
    return [next(keys) if len(s) == _SIGNATURE_BYTES else [] for s in signatures]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The estimated Jaccard similarity of the two texts' shingle sets."""
    return float(np.count_nonzero(a == b)) / PERMUTATIONS
