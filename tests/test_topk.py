"""bnrepro.metrics.topk_correct against an independent implementation (scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import top_k_accuracy_score

from bnrepro.metrics import topk_correct


@pytest.mark.parametrize("levels", [3, 1000])  # 3 levels: almost every row has ties
def test_topk_matches_sklearn_with_ties(levels: int) -> None:
    rng = np.random.default_rng(levels)
    n, classes = 2000, 12
    scores = rng.integers(0, levels, size=(n, classes)).astype(np.float32)
    scores /= scores.sum(1, keepdims=True) + 1  # probability-like, ties kept
    target = rng.integers(0, classes, size=n)
    ks = (1, 2, 5, 11)
    ours = topk_correct(torch.from_numpy(scores), torch.from_numpy(target), ks)
    for k in ks:
        expected = top_k_accuracy_score(
            target, scores, k=k, labels=np.arange(classes), normalize=False
        )
        assert ours[k].sum().item() == expected


def test_all_tied_row_counts_only_the_top_indices() -> None:
    scores = torch.full((3, 10), 0.1)
    target = torch.tensor([9, 5, 0])  # sklearn ranks the larger index first among ties
    hits = topk_correct(scores, target, (1, 5))
    assert hits[1].tolist() == [True, False, False]
    assert hits[5].tolist() == [True, True, False]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_are_never_correct(bad: float) -> None:
    """A diverged network (NaN logits) scored 100% (issue 11): any non-finite row counts as wrong."""
    scores = torch.full((4, 10), bad)
    scores[3] = torch.arange(10.0)  # one finite row: class 9 first
    scores[2, 0] = 1.0  # one non-finite score is enough to make a row wrong
    hits = topk_correct(scores, torch.tensor([0, 5, 0, 9]), (1, 5))
    assert hits[1].tolist() == [False, False, False, True]
    assert hits[5].tolist() == [False, False, False, True]
