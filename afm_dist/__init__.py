"""afm-dist: distributed batch trainer for the Attentional Factorization Machine."""

__version__ = "0.1.0"
