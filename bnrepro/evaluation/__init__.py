"""Evaluation beyond the training loop's single crop: test-time crops, Algorithm 2, the ensemble.

crops      1 / 10 / 144-crop geometry (GoogLeNet section 7) on decoded tensors
bn_stats   Algorithm 2: BN population statistics (bnrepro-bn-stats)
ensemble   checkpoints alone and as an ensemble, Figure 4 (bnrepro-ensemble)
"""
