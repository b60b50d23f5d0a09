"""ZipIt! (Stoica et al., "ZipIt! Merging Models from Different Tasks without Training",
ICLR 2024, https://arxiv.org/abs/2305.03053): feature statistics and feature matching.

This package is pure math (torch, numpy, scipy, stdlib only) so it can be unit-tested and reused
anywhere; the Ray code that collects activations and applies the matchings lives in
``raymerge/executor.py``.
"""
