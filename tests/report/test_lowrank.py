"""§7's linear algebra (report.lowrank) on synthetic matrices whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from peftrepro.report.lowrank import (
    RANDOM_DRAWS,
    projection_norm,
    projection_norms,
    random_gaussian_pair,
    random_similarity,
    shared_directions,
    subspace_similarity,
    top_directions,
)

RNG = np.random.default_rng(0)


def rows_in(directions: np.ndarray, weights: list[float]) -> np.ndarray:
    """A matrix (r × d) whose rows are `directions` (orthonormal, r × d) scaled by distinct singular values."""
    return np.diag(weights) @ directions


def test_identical_subspaces_give_one_everywhere() -> None:
    A = RNG.standard_normal((8, 100))
    rotation, _ = np.linalg.qr(RNG.standard_normal((8, 8)))
    for same_row_space_and_singular_vectors in (A, 3.0 * A, rotation @ A):
        np.testing.assert_allclose(subspace_similarity(A, same_row_space_and_singular_vectors), 1.0, atol=1e-9)


def test_orthogonal_subspaces_give_zero() -> None:
    basis = np.linalg.qr(RNG.standard_normal((50, 12)))[0].T  # 12 orthonormal rows in R^50
    phi = subspace_similarity(basis[:4] * 2.0, basis[4:])
    assert phi.shape == (4, 8)
    np.testing.assert_allclose(phi, 0.0, atol=1e-12)


def test_planted_shared_directions_are_counted_whatever_their_order() -> None:
    basis = np.linalg.qr(RNG.standard_normal((64, 64)))[0].T
    first = rows_in(basis[[0, 1, 2, 10, 11, 12, 13, 14]], [8, 7, 6, 5, 4, 3, 2, 1])
    second = rows_in(basis[[20, 21, 2, 0, 22, 1, 23, 24]], [8, 7, 6, 5, 4, 3, 2, 1])  # the three, lower down
    assert shared_directions(first, second) == 3


def test_a_planted_top_direction_is_shared_and_nothing_else() -> None:
    basis = np.linalg.qr(RNG.standard_normal((40, 4)))[0].T
    low = rows_in(basis[[0, 1]], [3.0, 1.0])  # top direction e0
    high = rows_in(basis[[0, 2, 3]], [3.0, 1.0, 0.5])  # the same top direction, the rest elsewhere
    phi = subspace_similarity(low, high)
    assert phi[0, 0] == pytest.approx(1.0)  # φ(1, 1): the top directions coincide
    assert phi[1, 1] == pytest.approx(0.5)  # φ(2, 2): one of two directions shared
    assert phi[1, 0] == pytest.approx(1.0)  # φ(2, 1): the top of `high` lies in the top-2 of `low`
    assert shared_directions(low, high) == 1


@pytest.mark.parametrize("d", [500, pytest.param(2000, marks=pytest.mark.slow)])  # d=2000: ~35 s of SVDs
def test_random_subspaces_overlap_by_about_max_i_j_over_d(d: int) -> None:
    r = 16
    phi = np.mean([random_similarity(r, d, seed) for seed in range(100)], axis=0)
    i, j = np.meshgrid(np.arange(1, r + 1), np.arange(1, r + 1), indexing="ij")
    np.testing.assert_allclose(phi, np.maximum(i, j) / d, rtol=0.35)  # φ(1, 1) is a χ²₁/d: noisy per draw
    assert shared_directions(*random_gaussian_pair(64, d)) == 0  # random matrices share no direction (Figure 4)


def _orthonormal(n: int, k: int) -> np.ndarray:
    return np.linalg.qr(RNG.standard_normal((n, k)))[0]


def test_amplification_of_a_planted_direction_is_its_scale_over_ws_singular_value() -> None:
    d_out, d_in = 30, 40
    U, V = _orthonormal(d_out, 30), _orthonormal(d_in, 30)
    sigma = np.linspace(10.0, 0.1, 30)  # W's singular values, largest first
    W = U @ np.diag(sigma) @ V.T
    for k, scale in ((20, 2.0), (0, 2.0)):  # a direction W does not emphasise, then W's top one
        delta = scale * np.outer(U[:, k], V[:, k])
        rows = projection_norms(W, delta, r=1)
        assert rows.delta_directions == pytest.approx(sigma[k])
        assert rows.delta_norm == pytest.approx(scale)
        assert rows.amplification == pytest.approx(scale / sigma[k])
    assert rows.w_directions == pytest.approx(sigma[0]) and rows.w_norm == pytest.approx(np.linalg.norm(sigma))


def test_ws_own_directions_carry_the_most_and_random_ones_about_r_norm_over_sqrt_dd() -> None:
    d_out, d_in, r = 60, 90, 4
    W = RNG.standard_normal((d_out, d_in))
    delta = _orthonormal(d_out, r) @ _orthonormal(d_in, r).T
    rows = projection_norms(W, delta, r)
    top = np.linalg.svd(W, compute_uv=False)[:r]
    assert rows.w_directions == pytest.approx(np.sqrt(np.sum(top ** 2)))  # Ky Fan: nothing carries more
    assert rows.delta_directions < rows.w_directions
    # E‖UᵀWVᵀ‖²_F = r²‖W‖²_F/(d_out·d_in) for random orthonormal U, V; RANDOM_DRAWS draws averaged
    assert rows.random_directions == pytest.approx(r * np.linalg.norm(W) / np.sqrt(d_out * d_in), rel=0.3)
    assert RANDOM_DRAWS >= 10


def test_random_directions_have_the_law_of_a_gaussian_matrixs_top_singular_vectors(monkeypatch) -> None:
    """Table 7's random column draws orthonormal frames by QR (lowrank.random_directions): the projection
    norms they give must be distributed as with the top-r singular vectors of Gaussian matrices."""
    from peftrepro.report import lowrank

    shape, r, draws = (12, 20), 3, 4000
    W = RNG.standard_normal(shape) * np.linspace(3.0, 0.1, shape[1])  # an anisotropic W, so the law matters
    by_svd = [projection_norm(W, *top_directions(RNG.standard_normal(shape), r)) for _ in range(draws)]
    monkeypatch.setattr(lowrank, "RANDOM_DRAWS", draws)
    lowrank.random_directions.cache_clear()
    by_qr = [projection_norm(W, U, Vt) for U, Vt in lowrank.random_directions(shape, r, seed=1)]
    lowrank.random_directions.cache_clear()  # the next caller draws RANDOM_DRAWS again
    for quantile in (25, 50, 75, 95):
        assert np.percentile(by_qr, quantile) == pytest.approx(np.percentile(by_svd, quantile), rel=0.06)


def test_the_random_columns_range_is_the_5th_to_95th_percentile_of_the_random_draws() -> None:
    from peftrepro.report.lowrank import random_directions

    W, r = RNG.standard_normal((30, 40)), 2
    rows = projection_norms(W, _orthonormal(30, r) @ _orthonormal(40, r).T, r)
    draws = [projection_norm(W, U, Vt) for U, Vt in random_directions(W.shape, r)]
    assert (rows.random_low, rows.random_directions, rows.random_high) == pytest.approx(
        (np.percentile(draws, 5), np.mean(draws), np.percentile(draws, 95)))
    assert rows.random_low < rows.random_directions < rows.random_high
