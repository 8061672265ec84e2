"""The linear algebra of the paper's §7 (arXiv 2106.09685 v2), in float64 NumPy.

    subspace_similarity(A1, A2)     φ(A1, A2, i, j) for every i, j (§7.2 eq. 4, App. G)
    shared_directions(A1, A2)       how many directions two row spaces share (principal angles under 45°,
                                    or under what two random matrices reach: chance_cosine)
    projection_norms(W, ΔW, r)      ‖Uᵀ W Vᵀ‖_F for the top-r directions of ΔW, of W and of random
                                    matrices, ‖W‖_F, ‖ΔW‖_F and the amplification factor (§7.3 Table 7, App. H.4)

φ compares the top-i right-singular vectors of A1 with the top-j of A2 (A is r × d_in: its right-
singular vectors span its row space in the input space, §7.2): φ = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j),
1 when one span contains the other, 0 when they are orthogonal. Two independent random subspaces of
R^d give about max(i, j)/d (`random_similarity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SHARED = 0.5  # §7.2: A_{r=8} and A_{r=64} "share a subspace of dimension 1 with normalized similarity > 0.5"
# (a shared direction: cos² > 0.5, an angle under 45°, closer to the other span than to its complement)
RANDOM_DRAWS = 200  # random matrices for Table 7's "Random" column: their mean and 95th percentile (the paper
# draws one, which says nothing of how far a random projection may reach by chance)
RANDOM_QUANTILE = 95


def right_singular_basis(A: np.ndarray) -> np.ndarray:
    """d_in × min(r, d_in): A's right-singular vectors as columns, largest singular value first."""
    return np.linalg.svd(np.asarray(A, dtype=np.float64), full_matrices=False)[2].T


def subspace_similarity(A1: np.ndarray, A2: np.ndarray) -> np.ndarray:
    """φ(A1, A2, i, j) at [i-1, j-1] for every i ≤ rank(A1) and j ≤ rank(A2)."""
    overlap = (right_singular_basis(A1).T @ right_singular_basis(A2)) ** 2
    captured = overlap.cumsum(axis=0).cumsum(axis=1)  # ‖U1[:, :i]ᵀ U2[:, :j]‖²_F
    i = np.arange(1, overlap.shape[0] + 1)[:, None]
    j = np.arange(1, overlap.shape[1] + 1)[None, :]
    return captured / np.minimum(i, j)


def shared_directions(A1: np.ndarray, A2: np.ndarray, threshold: float = SHARED) -> int:
    """How many directions the row spaces of A1 and A2 share: their principal angles under 45° (cos² above
    `threshold`). The cos² are the squared singular values of U1ᵀU2, whose sum is φ's numerator (App. G)."""
    cosines = np.linalg.svd(right_singular_basis(A1).T @ right_singular_basis(A2), compute_uv=False)
    return int(np.sum(cosines ** 2 > threshold))


@lru_cache(maxsize=16)
def chance_cosine(r: int, d: int, seed: int = 0) -> float:
    """The largest cos² between the row spaces of two random Gaussian r × d matrices that only
    100 − RANDOM_QUANTILE % of RANDOM_DRAWS pairs exceed: two matrices share a direction beyond chance
    where a principal angle's cos² lies above it. (At r=64, d=576 random pairs stay near 0.4, under the
    paper's 0.5, which therefore cannot tell two seeds from two random matrices.)"""
    rng = np.random.default_rng(seed)
    largest = [np.linalg.svd(right_singular_basis(rng.standard_normal((r, d))).T
                             @ right_singular_basis(rng.standard_normal((r, d))), compute_uv=False)[0] ** 2
               for _ in range(RANDOM_DRAWS)]
    return float(np.percentile(largest, RANDOM_QUANTILE))


def random_gaussian_pair(r: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two random Gaussian r × d matrices (Figure 4, right)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((r, d)), rng.standard_normal((r, d))


def random_similarity(r: int, d: int, seed: int = 0) -> np.ndarray:
    """φ between two random Gaussian r × d matrices."""
    return subspace_similarity(*random_gaussian_pair(r, d, seed))


def top_directions(M: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """U (d_out × r) and Vᵀ (r × d_in): the top-r left and right singular vectors of M."""
    u, _, vt = np.linalg.svd(np.asarray(M, dtype=np.float64), full_matrices=False)
    return u[:, :r], vt[:r]


def projection_norm(W: np.ndarray, U: np.ndarray, Vt: np.ndarray) -> float:
    """‖Uᵀ W Vᵀ‖_F: how much of W lies in the directions U (output side) and Vᵀ (input side)."""
    return float(np.linalg.norm(U.T @ np.asarray(W, dtype=np.float64) @ Vt.T))


@dataclass(frozen=True)
class Projections:
    """One row of Table 7: W projected on the top-r directions of ΔW, of W and of random matrices."""

    rank: int
    delta_directions: float
    w_directions: float
    random_directions: float  # mean over RANDOM_DRAWS Gaussian matrices
    random_high: float  # their RANDOM_QUANTILE-th percentile: what beats it is unlikely to be chance
    random_low: float  # their (100 − RANDOM_QUANTILE)-th percentile: what stays under it is unlikely too
    w_norm: float
    delta_norm: float

    @property
    def amplification(self) -> float:
        """‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F with U, V of ΔW (App. H.4): how strongly ΔW scales up the part of W
        that lies in its own directions."""
        return self.delta_norm / self.delta_directions


@lru_cache(maxsize=16)
def random_directions(shape: tuple[int, int], r: int, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The top-r directions (U, Vᵀ) of RANDOM_DRAWS seeded Gaussian matrices of `shape`, drawn once per shape
    and r: every run and layer of a table is projected on the same ones. Not by SVD: a Gaussian matrix's
    left and right singular vectors are independent and uniformly distributed (its law is invariant under
    rotations on either side), so the orthonormal basis of a Gaussian d × r block has the same law as its
    top-r singular vectors on that side, at a fraction of a full SVD's cost."""
    rng = np.random.default_rng(seed)
    d_out, d_in = shape

    def frame(d: int) -> np.ndarray:
        return np.linalg.qr(rng.standard_normal((d, min(r, d))))[0]

    return tuple((frame(d_out), frame(d_in).T) for _ in range(RANDOM_DRAWS))


def projection_norms(W: np.ndarray, delta: np.ndarray, r: int, seed: int = 0) -> Projections:
    """Table 7's quantities for one pre-trained W and its update ΔW of rank r (both d_out × d_in)."""
    W, delta = np.asarray(W, dtype=np.float64), np.asarray(delta, dtype=np.float64)
    random = [projection_norm(W, U, Vt) for U, Vt in random_directions(W.shape, r, seed)]
    return Projections(rank=r, delta_directions=projection_norm(W, *top_directions(delta, r)),
                       w_directions=projection_norm(W, *top_directions(W, r)), random_directions=float(np.mean(random)),
                       random_high=float(np.percentile(random, RANDOM_QUANTILE)),
                       random_low=float(np.percentile(random, 100 - RANDOM_QUANTILE)),
                       w_norm=float(np.linalg.norm(W)), delta_norm=float(np.linalg.norm(delta)))
