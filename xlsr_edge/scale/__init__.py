"""Scale out on a Ray cluster: `xlsr-edge transcribe-dataset` and `xlsr-edge eval --address` (issue 17).

Ray is an optional extra (`pip install 'xlsr-edge[ray]'`): nothing here imports it at module level, and the
first call that needs it raises MissingDependencyError naming the extra. The runtime that goes on a device
(`xlsr_edge.runtime`, `xlsr_edge.decoders`) never imports this package.

* `cluster`: connecting (`local` starts a loopback-only cluster in this process; `auto`, `HOST:PORT` and
  `ray://HOST:10001` join an existing one), resources, the worker pool size.
* `worker`: the callable class Ray Data's `map_batches` runs in a pool of actors, each holding one Recognizer;
  the bundle reaches it by path or through the object store and is checked by sha256 on every worker.
* `output`: the output folder: Parquet or JSONL shards (temp name, then renamed), _job.json, _summary.json,
  and what an earlier run already wrote (--resume).
* `job`: the driver: manifests -> Ray Data -> shards, exactly once; `RayRecognizer` for `eval --address`.
"""

from xlsr_edge.scale.cluster import ClusterOptions, PoolOptions
from xlsr_edge.scale.job import JobOptions, JobResult, RayRecognizer, transcribe_dataset

__all__ = ["ClusterOptions", "JobOptions", "JobResult", "PoolOptions", "RayRecognizer", "transcribe_dataset"]
