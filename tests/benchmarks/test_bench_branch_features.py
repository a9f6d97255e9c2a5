"""The branch read-out benchmark measures what ships: its average read-out is the backbone's pooled output, and its
numpy branch computes ``emb_model.FrozenBranch`` per view."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from coinvision.trainer.emb_branch import whitened_pca
from coinvision.trainer.emb_model import FrozenBranch

from benchmarks.bench_branch_features import _branch, _readouts
from benchmarks.bench_embedder_pair import _score


def test_readouts_of_lite0_match_its_pooled_output_and_stage_widths() -> None:
    torch.manual_seed(0)
    lite = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()  # random weights: the graph is the point
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, pooled = _readouts(lite, x), lite(x)
    torch.testing.assert_close(out["head_avg"], pooled)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "head_avg": (2, 1280), "head_gem": (2, 1280), "head_max": (2, 1280), "stage6_avg": (2, 320),
        "stage5_avg": (2, 192), "head224_avg": (2, 1280), "head224_gem": (2, 1280)}
    # GeM (p = 3) lies between the average and the maximum of the non-negative head activations
    assert torch.all(out["head_gem"] >= out["head_avg"] - 1e-5) and torch.all(out["head_gem"] <= out["head_max"] + 1e-5)


class _Flatten(torch.nn.Module):
    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_numpy_branch_is_the_frozen_branch_per_view() -> None:
    rng = np.random.default_rng(0)
    fit = rng.standard_normal((60, 1, 3)) + np.array([2.0, -1.0, 0.5])
    apply = _branch(fit, dims=2)
    branch = FrozenBranch(_Flatten(), torch.ones(3), torch.zeros(3), dims=2)
    unit = fit[:, 0] / np.linalg.norm(fit[:, 0], axis=1, keepdims=True)
    mean, proj = whitened_pca(unit, 2)
    branch.pca_mean.copy_(torch.from_numpy(mean).float())
    branch.pca_projection.copy_(torch.from_numpy(proj).float())
    query = rng.standard_normal((5, 1, 3))
    with torch.no_grad():
        want = branch(torch.from_numpy(query[:, 0]).float().reshape(5, 3, 1, 1)).numpy()
    np.testing.assert_allclose(apply(query, views=(0,)), want, atol=1e-5)


def test_pair_score_weights_the_three_cosines() -> None:
    # one class per catalog photo; the query is closest to class "a" in part 0 and to class "b" in part 1
    e = np.eye(4)
    parts = [{"catalog": e[[0, 1]], "query": e[[0]], "train": e[[2]], "val_seen": e[[2]]},
             {"catalog": e[[0, 1]], "query": e[[1]], "train": e[[2]], "val_seen": e[[2]]},
             {"catalog": e[[0, 1]], "query": e[[0]], "train": e[[2]], "val_seen": e[[2]]}]
    labels = {"catalog": np.array(["a", "b"]), "query": np.array(["a"]), "train": np.array(["t"]),
              "val_seen": np.array(["t"])}
    assert _score((0.5, 0.0, 0.5), parts, labels)["unseen R@1"] == pytest.approx(1.0)
    assert _score((0.2, 0.8, 0.0), parts, labels)["unseen R@1"] == pytest.approx(0.0)
