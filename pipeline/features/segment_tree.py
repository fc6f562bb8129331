"""Range reductions for the window kernel: a bottom-up segment tree that reduces any slice
[lo, hi) of many queries at once with a commutative, associative merge (min, max, and the
(count, mean, M2) moments of std)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Merge = Callable[[tuple[np.ndarray, ...], tuple[np.ndarray, ...]], tuple[np.ndarray, ...]]


def range_reduce(leaves: tuple[np.ndarray, ...], merge: Merge, identity: tuple[float, ...],
                 lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Reduce leaves[lo:hi] for every query with a commutative, associative `merge`.

    A bottom-up segment tree: O(n) to build, O(log(hi - lo)) vectorised steps per query.
    """
    size = 1 << max(len(leaves[0]) - 1, 0).bit_length()
    tree = []
    for leaf, empty in zip(leaves, identity):
        nodes = np.full(2 * size, empty)
        nodes[size:size + len(leaf)] = leaf
        tree.append(nodes)
    level = size
    while level > 1:
        merged = merge(tuple(nodes[level:2 * level:2] for nodes in tree),
                       tuple(nodes[level + 1:2 * level:2] for nodes in tree))
        for nodes, part in zip(tree, merged):
            nodes[level // 2:level] = part
        level //= 2
    acc = tuple(np.full(len(lo), empty) for empty in identity)
    query = np.flatnonzero(lo < hi)
    left, right = lo[query] + size, hi[query] + size
    while len(query):
        take = np.flatnonzero(left % 2 == 1)
        _merge_into(acc, query[take], tuple(nodes[left[take]] for nodes in tree), merge)
        left[take] += 1
        take = np.flatnonzero(right % 2 == 1)
        right[take] -= 1
        _merge_into(acc, query[take], tuple(nodes[right[take]] for nodes in tree), merge)
        left, right = left // 2, right // 2
        alive = left < right
        query, left, right = query[alive], left[alive], right[alive]
    return acc


def _merge_into(acc: tuple[np.ndarray, ...], rows: np.ndarray, node: tuple[np.ndarray, ...],
                merge: Merge) -> None:
    for values, merged in zip(acc, merge(tuple(values[rows] for values in acc), node)):
        values[rows] = merged


def merge_min(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return (np.minimum(a[0], b[0]),)


def merge_max(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return (np.maximum(a[0], b[0]),)


def merge_moments(a: tuple[np.ndarray, ...],
                   b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Chan et al.'s pairwise merge of (count, mean, sum of squared deviations)."""
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    share = np.divide(nb, n, out=np.zeros_like(n), where=n > 0)
    delta = mb - ma
    return n, ma + delta * share, m2a + m2b + delta * delta * na * share
