"""The counts a node has released about its table, across queries, and the audit that no
combination of them pins down a small count.

Every count an analytics answer or a catalog releases counts a set of the table's rows (a group,
a bin, a level, the rows with a value in some columns), and every sum it releases is over such a
set. Suppressing small cells in one answer does not stop differencing across answers: the ages
20 to 99 and then the same without 77 differ by the 77-year-olds, and their sums by that person's
values; histograms whose edges shift a little between queries spell out values one by one.

So the node keeps the row set of every count it released (one bit per row of its table, in the
node's home) and audits each new answer against all of them together before it leaves: the rows
fall into atoms (rows no released set tells apart), each released count is the sum of its atoms'
sizes, and an answer is refused when, with it, some atom holding 1 to ``min_count - 1`` rows has a
size the released counts determine (it lies in the row space of their linear system: the rank test
lab.core.disclosure runs within one table, here across every answer). A sum over rows is released
only with their count, so a small atom whose count is not determined cannot have its sum worked out
either. Bounds (that an atom holds at most so many rows) are not audited, nor are changes of the
table between answers: the history is kept per version of the table.
"""

from __future__ import annotations

import fcntl
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["Disclosure", "ReleaseHistory", "line_count", "table_version"]

#: Past this many atoms the audit's linear algebra would take too long: the answer is refused.
MOST_ATOMS = 6000


def table_version(frame: pd.DataFrame) -> str:
    """A digest of the table's raw rows: the releases history is kept per version of the table."""
    hashed = pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy()
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(hashed.tobytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Disclosure:
    """An atom of rows whose count the released counts (with a new answer) would determine."""

    rows: int  # how many rows it holds (1 to min_count - 1)
    cells: int  # how many released counts took part


def line_count(rows: int) -> int:
    """How many lines masks over a table of ``rows`` rows have: a row's line is its position plus 1
    or 2 (a header)."""
    return rows + 2


class ReleaseHistory:
    """The row sets of every count a node released about one version of its table, each a mask
    over the table's lines (``line_count``)."""

    def __init__(self, folder: Path, version: str, rows: int) -> None:
        self.path = folder / f"{version}.npy"
        self.rows = line_count(rows)

    def _load(self) -> np.ndarray:
        if not self.path.is_file():
            return np.zeros((0, (self.rows + 7) // 8), dtype=np.uint8)
        kept: np.ndarray = np.load(self.path, allow_pickle=False)
        return kept

    def audit(self, cells: list[np.ndarray], min_count: int) -> Disclosure | None:
        """The first small atom ``cells`` (boolean row masks) would let be worked out with every
        count released before, or None."""
        if not cells:
            return None
        past = np.unpackbits(self._load(), axis=1, count=self.rows).astype(bool)
        matrix = np.vstack([past, np.asarray(cells, dtype=bool)]) if len(past) else np.asarray(cells, dtype=bool)
        return _determined(matrix, min_count)

    def keep(self, cells: list[np.ndarray]) -> None:
        """Add ``cells`` to the released row sets (those not released before)."""
        if not cells:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            past = self._load()
            new = np.packbits(np.asarray(cells, dtype=bool), axis=1)
            merged = np.unique(np.vstack([past, new]), axis=0)
            draft = self.path.with_suffix(".draft.npy")
            np.save(draft, merged, allow_pickle=False)
            draft.replace(self.path)


def _determined(matrix: np.ndarray, min_count: int) -> Disclosure | None:
    """A small atom whose size lies in the row space of the released counts' system, if any."""
    covered = matrix.any(axis=0)
    signatures, atom_of = np.unique(matrix[:, covered].T, axis=0, return_inverse=True)
    sizes = np.bincount(atom_of.reshape(-1), minlength=len(signatures))
    small = np.flatnonzero((sizes > 0) & (sizes < min_count))
    if not len(small):
        return None
    if len(signatures) > MOST_ATOMS:
        return Disclosure(int(sizes[small[0]]), len(matrix))
    system = np.unique(signatures.T.astype(np.float64), axis=0)  # one equation per distinct released set
    _, singular, right = np.linalg.svd(system, full_matrices=False)
    rank = int((singular > singular.max() * max(system.shape) * 1e-12).sum()) if len(singular) else 0
    basis = right[:rank]
    reach = (basis[:, small] ** 2).sum(axis=0)  # 1 where the atom's indicator lies in the row space
    for atom, inside in zip(small, reach, strict=True):
        if inside > 1 - 1e-9:
            return Disclosure(int(sizes[atom]), len(system))
    return None
