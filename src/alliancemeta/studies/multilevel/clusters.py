"""Rows grouped by cluster (study): the factorisation that every three-level computation sorts by."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Clusters:
    """Rows grouped by cluster: ``order`` sorts the rows so that every cluster is contiguous."""

    labels: np.ndarray  # cluster label per code, in order of first appearance
    codes: np.ndarray  # code (0..J-1) per row, original row order
    order: np.ndarray  # permutation of the rows that sorts them by code (stable)
    sizes: np.ndarray  # rows per cluster
    starts: np.ndarray  # first sorted row of each cluster

    @property
    def n(self) -> int:
        return int(self.sizes.size)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per-cluster sums of ``values`` given in sorted row order (1-D or 2-D along axis 0)."""
        return np.add.reduceat(values, self.starts, axis=0)

    def spread(self, per_cluster: np.ndarray) -> np.ndarray:
        """Repeat per-cluster values over the cluster's (sorted) rows."""
        return np.repeat(per_cluster, self.sizes, axis=0)


def group_clusters(cluster) -> Clusters:
    """Factorise a cluster variable (labels of any hashable type); missing labels are an error."""
    series = pd.Series(np.asarray(cluster, dtype=object) if not isinstance(cluster, pd.Series) else cluster)
    if series.isna().any():
        raise ValueError(f"cluster has missing values (first at position {int(np.flatnonzero(series.isna())[0])})")
    codes, labels = pd.factorize(series, sort=False)
    codes = np.asarray(codes, dtype=np.intp)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=len(labels))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return Clusters(np.asarray(labels, dtype=object), codes, order, sizes, starts)
