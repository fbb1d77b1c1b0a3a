"""The paper's figures and the tools around them.

fig1       Figure 1 on real MNIST: a sigmoid MLP with and without BN (bnrepro-fig1)
report     Figures 2-4 from run folders or W&B (bnrepro-report)
dashboard  the W&B report comparing the variants (bnrepro-dashboard)
tables     every markdown table and number format of the results (Figures 3-4, results.md);
           a leaf: no torch, timm or Hydra, so every command can write them
"""
