"""raymerge: model merging for very large checkpoints, run as a distributed pipeline on Ray.

The package is split so that the architecture shows:

- ``config``   strict mergekit-compatible configuration (pydantic)
- ``storage``  model references / output URLs -> fsspec filesystems
- ``io``       safetensors header parsing, byte-range reads, shard layout and sinks
- ``plan``     pure, header-only planning of per-tensor jobs and output shards
- ``methods``  pure merge kernels behind one explicit registry
- ``executor`` the only module that schedules work with Ray
- ``manifest`` the Parquet manifest that makes runs verifiable and resumable
"""

__version__ = "0.1.0"

from raymerge.errors import RaymergeError

__all__ = ["RaymergeError", "__version__"]
