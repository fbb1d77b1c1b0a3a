"""The paper's numbers that the code compares with or counts in (docs/paper.md).

A leaf module: plain constants, no imports, so that every layer can cite the paper from here.
"""

# docs/paper.md section 3: the paper's mini-batch. Its LRs belong to a batch of 32, and its
# "steps" (Figures 2 and 3) are mini-batches of 32: paper steps = images seen / 32.
PAPER_BATCH = 32

# docs/paper.md section 4, Figure 3: paper steps to reach Inception's 72.2%, and max accuracy.
FIGURE3 = {
    "inception": (31.0e6, 0.722),
    "bn_baseline": (13.3e6, 0.727),
    "bn_x5": (2.1e6, 0.730),
    "bn_x30": (2.7e6, 0.748),
    "bn_x5_sigmoid": (None, 0.698),
}

# The paper's names of the variants (section 4.2.2, Figures 2 and 3), by experiment; the two
# controls have no name in the paper: theirs are [ours], in the paper's style.
NAMES = {
    "inception": "Inception",
    "bn_baseline": "BN-Baseline",
    "bn_x5": "BN-x5",
    "bn_x30": "BN-x30",
    "bn_x5_sigmoid": "BN-x5-Sigmoid",
    "inception_sigmoid": "Inception-Sigmoid",
    "inception_x5": "Inception-x5",
}

# docs/paper.md section 4 (section 4.2.3): BN-x30 and the ensemble members peak "after about 6e6
# steps": the shortest budget that shows the accelerated BN networks' whole curve.
BN_X30_PEAK_STEPS = 6.0e6

# docs/paper.md section 3 (section 4.2.2): the controls that diverged: Inception at BN-x5's LR.
PAPER_DIVERGED = ("inception_x5",)

# docs/paper.md section 3 (section 4.2.2): the LR at which Inception (no BN) diverged, BN-x5's
# 5 x 0.0015, at the paper's mini-batch of 32: a BN-free network above it risks the same.
PAPER_DIVERGED_LR = 0.0075

# docs/paper.md section 4, Figure 4: (crops, models) -> (top-1 error, top-5 error).
FIGURE4 = {
    (1, 1): (0.252, 0.0782),
    (144, 1): (0.2199, 0.0582),
    (144, 6): (0.201, 0.049),
}
