"""The ensemble benchmark's two pieces of arithmetic: concatenated rows score the weighted sum of the two cosines,
and the half-whitened PCA (the shipped branch's, ``trainer.emb_branch``) scales each principal direction by
1 / sqrt(its singular value)."""

from __future__ import annotations

import numpy as np
from coinvision.trainer.emb_branch import whitened_pca

from benchmarks.bench_embedder_ensemble import concat_rows


def test_concatenated_cosine_is_the_weighted_sum_of_cosines() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 5, 16))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    for w in (0.0, 0.3, 0.7, 1.0):
        x, y = concat_rows(a[0], b[0], w), concat_rows(a[1], b[1], w)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0)
        want = w * np.sum(unit(a[0]) * unit(a[1]), 1) + (1 - w) * np.sum(unit(b[0]) * unit(b[1]), 1)
        np.testing.assert_allclose(np.sum(x * y, 1), want, atol=1e-12)


def test_half_whitened_pca_scales_directions_by_inverse_root_singular_values() -> None:
    rng = np.random.default_rng(1)
    train = rng.standard_normal((400, 6)) * np.array([9.0, 4.0, 1.0, 0.5, 0.2, 0.1]) + 3.0
    mean, proj = whitened_pca(train, 3)
    assert proj.shape == (6, 3)
    np.testing.assert_allclose(mean, train.mean(0))
    sigma = np.linalg.svd(train - mean, compute_uv=False)[:3]
    spread = np.linalg.norm((train - mean) @ proj, axis=0)  # = sigma / sqrt(sigma)
    np.testing.assert_allclose(spread, np.sqrt(sigma), rtol=1e-10)
