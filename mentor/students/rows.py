"""Row access that works on dense arrays and scipy sparse (CSR) matrices alike.

A TF-IDF pool of a million texts × 5,000 terms is ~20 GB dense but a few hundred MB as CSR, so
featurized inputs may be either; everything that slices, stacks or counts them goes through
these functions, and rows are densified only a batch at a time (`dense_rows`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def is_sparse(x) -> bool:
    return sp.issparse(x)


def n_rows(x) -> int:
    """Number of rows (`len` is refused by scipy sparse matrices)."""
    return int(x.shape[0]) if sp.issparse(x) else len(x)


def take_rows(x, index):
    """Rows `index` (integer positions or a boolean mask) of an array or a CSR matrix."""
    index = np.asarray(index)
    if sp.issparse(x) and index.dtype == bool:
        index = np.flatnonzero(index)
    return x[index]


def stack_rows(*parts):
    """Rows of several matrices one after the other: CSR when any part is sparse, else an array."""
    if any(sp.issparse(p) for p in parts):
        return sp.vstack([sp.csr_matrix(p) for p in parts], format="csr", dtype=np.float32)
    return np.concatenate(parts)


def dense_rows(x, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows start:stop as a dense float32 array (the only place a sparse matrix is densified)."""
    part = x[start:stop]
    return part.toarray().astype(np.float32, copy=False) if sp.issparse(part) else np.asarray(part, dtype=np.float32)


def as_float32(x):
    """A float32 CSR matrix stays sparse; anything else becomes a float32 array."""
    return sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
