"""Both sides of `af.inf.<tier>`: the pool's remote backend and the model worker process."""

from bridges.workers._children import model_worker_child, remote_backends, worker_argv
from bridges.workers._remote import NoWorkers, RemoteBackend, WorkerFailed, WorkerLost
from bridges.workers._worker import ModelWorker, serve_worker, worker_pool

__all__ = [
    "ModelWorker",
    "NoWorkers",
    "RemoteBackend",
    "WorkerFailed",
    "WorkerLost",
    "model_worker_child",
    "remote_backends",
    "serve_worker",
    "worker_argv",
    "worker_pool",
]
