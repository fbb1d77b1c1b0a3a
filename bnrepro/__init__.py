"""bnrepro: Ioffe & Szegedy (2015), Batch Normalization, reproduced on ImageNet.

Importing the package registers `bn_inception` in timm's model registry.
"""

from bnrepro import model as _model  # noqa: F401  (registers bn_inception with timm)

__version__ = "0.1.0"
