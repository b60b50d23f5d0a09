"""Cluster entry points for ``ray job submit`` (merge.py, nightly.py) and their shared helpers.

Not part of the installed ``raymerge`` package: these files travel with ``--working-dir .``.
"""
