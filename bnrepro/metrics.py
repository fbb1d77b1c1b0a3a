"""Top-k accuracy, shared by the training loop's evaluation and the ensemble evaluator."""

from __future__ import annotations

import torch


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict:
    """For each k, a bool tensor [N]: is the true class among the k highest scores?

    Ties are ranked deterministically, the larger class index first (as
    sklearn.metrics.top_k_accuracy_score), so a tie can never make every tied class "correct".
    The true class's rank = #classes scoring higher + #tied classes with a larger index.
    A row with any non-finite score (a diverged network) is never correct: NaN compares False
    with everything, so its true class would otherwise rank first.
    """
    true_score = scores.gather(1, target[:, None])
    higher = (scores > true_score).sum(1)
    index = torch.arange(scores.shape[1], device=scores.device)
    tied_before = ((scores == true_score) & (index[None, :] > target[:, None])).sum(1)
    rank = higher + tied_before
    finite = scores.isfinite().all(1)
    return {k: (rank < k) & finite for k in ks}
