"""Merkle trees as RFC 9162 (Certificate Transparency 2.0, section 2.1) defines them.

Theory of operation
-------------------
A notary signs one *freshness statement* per scheduling turn: its payload
names the root of a Merkle tree whose leaves are the freshness leaves of every
request answered in that turn (see :mod:`notary.core.freshness`).  Each answer
carries its leaf, its index and its inclusion path; a verifier recomputes the
root from them and compares it with the signed root.

Hashing is domain-separated exactly as RFC 6962 / RFC 9162 do it, so a leaf can
never be passed off as an inner node or the other way round::

    leaf hash  = SHA-256(0x00 || leaf bytes)
    node hash  = SHA-256(0x01 || left hash || right hash)

The tree over ``n`` leaves is split at ``k``, the largest power of two smaller
than ``n`` (RFC 9162 section 2.1.1); the tree of one leaf is its leaf hash.
Inclusion paths are the sibling hashes from the leaf upwards (section 2.1.3.1)
and are checked with the algorithm of section 2.1.3.2.

Pure functions over bytes; no clock, no I/O.  Limits: at most
:data:`MAX_TREE_SIZE` leaves, so at most :data:`MAX_PATH` hashes in a path.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

__all__ = [
    "leaf_hash",
    "node_hash",
    "root_hash",
    "inclusion_path",
    "tree_paths",
    "root_from_path",
    "MAX_TREE_SIZE",
    "MAX_PATH",
]

MAX_TREE_SIZE = 1 << 20
MAX_PATH = 20


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one leaf (32 bytes)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an inner node (32 bytes)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """The root over already-hashed ``leaves`` (RFC 9162 MTH).  At least one leaf."""
    n = len(leaves)
    if n == 0:
        raise ValueError("a tree has at least one leaf")
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root_hash(leaves[:k]), root_hash(leaves[k:]))


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The inclusion path of leaf ``index`` in the tree over hashed ``leaves``, leaf level first."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError("index out of range")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return inclusion_path(leaves[:k], index) + [root_hash(leaves[k:])]
    return inclusion_path(leaves[k:], index - k) + [root_hash(leaves[:k])]


def tree_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root and every leaf's inclusion path at once, in O(n log n) steps and n - 1 hashes.

    Built bottom-up: each level hashes adjacent pairs and carries a lone last node up
    unchanged, which is the same tree as the RFC 9162 split (the left subtree is the
    largest perfect tree); a path takes a node's sibling at each level where it has one.
    """
    n = len(leaves)
    if n == 0:
        raise ValueError("a tree has at least one leaf")
    paths: list[list[bytes]] = [[] for _ in range(n)]
    level = list(leaves)
    shift = 0  # leaf i sits at position i >> shift of the current level
    while len(level) > 1:
        size = len(level)
        for i, path in enumerate(paths):
            sibling = (i >> shift) ^ 1
            if sibling < size:
                path.append(level[sibling])
        nxt = [node_hash(level[j], level[j + 1]) for j in range(0, size - 1, 2)]
        if size & 1:
            nxt.append(level[-1])
        level = nxt
        shift += 1
    return level[0], paths


def root_from_path(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """The root that ``path`` proves for hashed ``leaf`` at ``index`` in a tree of ``size``.

    RFC 9162 section 2.1.3.2.  Returns ``None`` when the path cannot be a valid
    path for that index and size (wrong length, index out of range); the caller
    compares a returned root with the signed one.
    """
    if not (0 <= index < size <= MAX_TREE_SIZE) or len(path) > MAX_PATH:
        return None
    if any(len(p) != 32 for p in path):
        return None
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None
    return r
