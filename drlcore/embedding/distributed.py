"""Backbone features on a Dask cluster: ``--cluster local`` or ``--scheduler ADDRESS``.

::

    with connect(ClusterConfig(cluster="local")) as client:   # or scheduler="tcp://host:8786"
        ...

:func:`drlcore.embedding.features.extract_features` does everything it does on one machine (discovery,
hashing, the cache lookup, assembling the outputs) and hands only the embedding of what the
cache cannot answer to the cluster, in batches of ``batch_size`` images (:func:`plan_batches`):
each task gets a batch of image records and returns their vectors, metadata, thumbnails and
decode failures (:func:`run_batch`: read, decode, square and thumbnail with the very function the
single-process path uses, then one ``Backbone.embed``). The driver writes each finished batch as
a cache shard the moment it arrives, and the thumbnails into the run's thumbnail shards in batch
order, so

- the features are the single-process path's (same cache key, same dtype, same values: on this
  CPU a row does not depend on its batch companions; it does on the torch thread count for some
  backbones, at the 1e-5 level, as between any two machines);
- a killed run resumes from the shards it wrote, on a cluster or not;
- a task that raises is retried (``retries``); a lost worker's tasks are moved to another worker
  by the scheduler (Dask's ``distributed.scheduler.allowed-failures``, 3 by default).

Each worker loads the backbone once (a per-process cache keyed by its settings) and checks its
weights hash against the driver's, so a worker with other weights fails loudly instead of filling
the cache with foreign vectors. Workers read the images by path (on a cluster, the images must be
on a file system every worker sees, as on SLURM) and write nothing: the run folder is the
driver's. Every worker needs the same drlcore installed.

Dask is an optional extra (``pip install -e ".[dask]"``); without it, :func:`require_dask` raises
one :class:`~drlcore.errors.DrlError` that says so. The cluster :func:`connect` starts is closed
when its ``with`` block ends, on success, error or Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from drlcore.errors import DrlError

__all__ = ["ClusterConfig", "BackboneSettings", "require_dask", "connect", "local_cluster_size",
           "plan_batches", "run_batch", "embed_task", "embed_on_cluster", "DASK_INSTALL_HINT"]

DASK_INSTALL_HINT = 'pip install -e ".[dask]"'
CLUSTER_KINDS = ("local",)


@dataclass(frozen=True)
class ClusterConfig:
    """Where the embedding runs: ``cluster="local"`` starts a LocalCluster for this command;
    ``scheduler`` connects to a running one (its address, e.g. ``tcp://10.0.0.5:8786``)."""

    cluster: str | None = None
    scheduler: str | None = None
    n_workers: int | None = None          # local only; default: local_cluster_size()
    threads_per_worker: int | None = None  # local only; default: local_cluster_size()
    processes: bool = True                 # local only; False: worker threads in this process
    retries: int = 2                       # a task that raises is run again up to this often
    connect_timeout: float = 30.0          # seconds to reach --scheduler

    def __post_init__(self) -> None:
        if (self.cluster is None) == (self.scheduler is None):
            raise DrlError("give either a cluster kind (--cluster local) or a scheduler address "
                           "(--scheduler ADDRESS), not both or neither")
        if self.cluster is not None and self.cluster not in CLUSTER_KINDS:
            raise DrlError(f"unknown cluster {self.cluster!r}; choose one of "
                           f"{', '.join(CLUSTER_KINDS)}, or --scheduler ADDRESS for a running one")
        if self.scheduler is not None and not str(self.scheduler).strip():
            raise DrlError("--scheduler needs an address, e.g. tcp://10.0.0.5:8786")
        for name in ("n_workers", "threads_per_worker"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DrlError(f"{name.replace('_', ' ')} must be a positive integer, "
                               f"not {value!r}")
            if self.scheduler is not None:
                raise DrlError(f"{name.replace('_', ' ')} applies to --cluster local only; a "
                               "running cluster (--scheduler) has the workers it was started with")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise DrlError(f"retries must be a non-negative integer, not {self.retries!r}")

    def describe(self) -> str:
        return (f"Dask scheduler {self.scheduler}" if self.scheduler
                else "a local Dask cluster")


def require_dask():
    """The ``dask.distributed`` module, or one DrlError that says how to install it."""
    try:
        import dask.distributed
    except ImportError as exc:
        raise DrlError(f"--cluster and --scheduler run the work on Dask, which is not installed "
                       f"here ({exc}). Install the optional extra: {DASK_INSTALL_HINT} (from a "
                       f"wheel: pip install 'drlcore[dask]'), or run without the option on "
                       f"this machine alone.") from None
    return dask.distributed


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_cluster_size(n_workers: int | None = None,
                       threads_per_worker: int | None = None) -> tuple[int, int]:
    """(workers, threads each) for a LocalCluster on this machine.

    CPU: one single-threaded worker per usable core (a forward pass keeps a core busy; one torch
    thread per process avoids oversubscription). GPU: one worker per GPU (each drives its own,
    see ``_worker_device``), the cores shared among them for decoding.
    """
    import torch

    cores = _usable_cores()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_workers is None:
        n_workers = gpus or cores
    if threads_per_worker is None:
        threads_per_worker = max(1, cores // n_workers) if gpus else 1
    return n_workers, threads_per_worker


@contextlib.contextmanager
def connect(config: ClusterConfig, reporter=None) -> Iterator:
    """A ``dask.distributed.Client`` for ``config``; what this starts ends with the block."""
    distributed = require_dask()
    with contextlib.ExitStack() as stack:
        if config.scheduler is not None:
            try:
                client = distributed.Client(config.scheduler, timeout=config.connect_timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise DrlError(f"cannot reach the Dask scheduler at {config.scheduler} "
                               f"({type(exc).__name__}: {exc}); is it running, and is the "
                               f"address the one it printed (tcp://HOST:PORT)?") from None
        else:
            n_workers, threads = local_cluster_size(config.n_workers, config.threads_per_worker)
            # Localhost only, on free ports: a cluster started for one command serves nobody
            # else and never collides with another one (its dashboard, where bokeh is
            # installed, is on a random local port; the message below names it).
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=threads, processes=config.processes,
                host="127.0.0.1", dashboard_address="127.0.0.1:0",
                silence_logs=logging.CRITICAL))
            client = distributed.Client(cluster)
        stack.enter_context(client)
        if reporter is not None:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
            threads = sum(w.get("nthreads", 0) for w in workers.values())
            dashboard = _dashboard(client)
            reporter.message(f"features: embedding on {config.describe()} "
                             f"({len(workers)} workers, {threads} threads"
                             + (f"; dashboard {dashboard}" if dashboard else "") + ")")
        yield client


def _dashboard(client) -> str | None:
    """The dashboard's address where one is served (it needs bokeh), else None."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return None
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - only a hint in a message
        return None


# ---------------------------------------------------------------------------------------------
# Worker side


@dataclass(frozen=True)
class BackboneSettings:
    """How a worker rebuilds the driver's backbone, and the weights hash it must arrive at."""

    name: str
    weights: str | None
    pretrained: bool
    dtype: str  # the driver's resolved dtype ("fp32"/"bf16"), never "auto": one cache key
    batch_size: int
    weights_hash: str
    engine: str = "torch"  # the driver's resolved engine, never "auto": one cache key
    cache_dir: str | None = None  # where the exported graph of an onnx/openvino engine lives

    @classmethod
    def of(cls, backbone, weights: str | None, pretrained: bool,
           cache_dir: str | None = None) -> BackboneSettings:
        return cls(name=backbone.spec.name, weights=weights, pretrained=bool(pretrained),
                   dtype=backbone.dtype, batch_size=int(backbone.batch_size),
                   weights_hash=backbone.weights_hash, engine=backbone.engine,
                   # Only an exported graph lives in the cache: a torch backbone is the same
                   # whichever cache a run names, so a worker keeps the one it loaded.
                   cache_dir=(None if cache_dir is None or backbone.engine == "torch"
                              else str(cache_dir)))


_LOADED: dict[BackboneSettings, object] = {}
_LOAD_LOCK = threading.Lock()


def _this_worker():
    try:
        from dask.distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None  # called outside a worker (tests, a plain function call)


def _worker_device(worker) -> str | None:
    """cuda:<k> spread over the GPUs by worker name (a LocalCluster names them 0, 1, ...);
    None (the default device) otherwise."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2 or worker is None:
        return None
    name = worker.name
    index = name if isinstance(name, int) else (int(name) if str(name).isdigit() else None)
    return None if index is None else f"cuda:{index % torch.cuda.device_count()}"


def _worker_backbone(settings: BackboneSettings):
    """The backbone for ``settings``, loaded once per worker process."""
    from drlcore.embedding.backbones import load_backbone

    with _LOAD_LOCK:
        backbone = _LOADED.get(settings)
        if backbone is None:
            worker = _this_worker()
            threads = worker.state.nthreads if worker is not None else None
            backbone = load_backbone(settings.name, settings.weights, settings.pretrained,
                                     dtype=settings.dtype, batch_size=settings.batch_size,
                                     device=_worker_device(worker), num_threads=threads,
                                     allow_download=False, engine=settings.engine,
                                     cache_dir=settings.cache_dir)
            if backbone.weights_hash != settings.weights_hash:
                where = f" on worker {worker.address}" if worker is not None else ""
                raise DrlError(
                    f"the backbone {settings.name!r} loaded{where} has weights "
                    f"{backbone.weights_hash}, not the driver's {settings.weights_hash}: every "
                    f"worker needs the same drlcore, weights package and --weights file")
            if backbone.engine != settings.engine:
                # A worker whose engine failed its probe would fill the cache key of the
                # driver's engine with another engine's vectors.
                raise DrlError(
                    f"the worker could not run engine {settings.engine} "
                    f"({backbone.engine_decision['reason']}); rerun with --engine "
                    f"{backbone.engine}")
            _LOADED[settings] = backbone
    return backbone


def run_batch(backbone, prepare: Callable, items: list[tuple]) -> dict:
    """Batch in, batch out: ``items`` are ``(record, digest, need_thumb, need_vector)``;
    ``prepare`` is the features stage's per-image function of those, returning ``(square, info,
    reason, thumbnail)``. Returns ``infos``, ``reasons`` and ``thumbs`` (JPEG bytes or None) per
    item, and ``digests`` / ``vectors`` (float32) of the items embedded, in item order."""
    infos, reasons, thumbs, digests, squares = [], [], [], [], []
    for record, digest, *needs in items:
        square, info, reason, thumb = prepare(record, digest, *needs)
        infos.append(info)
        reasons.append(reason)
        thumbs.append(thumb)
        if square is not None:
            digests.append(digest)
            squares.append(square)
    if squares:
        vectors = backbone.embed(np.stack(squares))
    else:
        vectors = np.zeros((0, backbone.spec.feature_dim), np.float32)
    return {"infos": infos, "reasons": reasons, "thumbs": thumbs, "digests": digests,
            "vectors": vectors}


def embed_task(settings: BackboneSettings, prepare: Callable, items: list[tuple]) -> dict:
    """What one Dask task runs. A user error (wrong weights here) comes back as ``error`` rather
    than as an exception, so it is reported at once instead of being retried."""
    try:
        return run_batch(_worker_backbone(settings), prepare, items)
    except DrlError as err:
        return {"error": str(err)}


# ---------------------------------------------------------------------------------------------
# Driver side


def plan_batches(items: Iterable[tuple], batch_size: int) -> Iterator[list[tuple]]:
    """Consecutive items (``(..., need_vector)`` last) grouped so each batch holds at most
    ``batch_size`` images to embed; items that only need decoding ride along."""
    batch: list[tuple] = []
    embeds = 0
    for item in items:
        if item[-1] and embeds == batch_size:
            yield batch
            batch, embeds = [], 0
        batch.append(item)
        embeds += bool(item[-1])
    if batch:
        yield batch


def _threads(client) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - a scheduler hiccup only changes how far ahead we submit
        return 1


def embed_on_cluster(client, settings: BackboneSettings, prepare: Callable,
                     batches: Iterable[list], on_batch: Callable[[list, dict], None],
                     retries: int = 2) -> int:
    """Run every batch on the cluster, at most two per worker thread in flight (memory stays
    bounded and a Ctrl-C has little to cancel; workers that join later are used as they come).
    ``on_batch(batch, result)`` is called in completion order. Returns the number of batches."""
    from dask.distributed import as_completed

    batches = iter(batches)
    in_flight: dict = {}
    done_with = as_completed()
    run_id = uuid.uuid4().hex[:8]
    count = 0

    def submit_more() -> None:
        nonlocal count
        while len(in_flight) < 2 * _threads(client):
            batch = next(batches, None)
            if batch is None:
                return
            # Looked up at call time (tests swap in a failing task to check the retries).
            future = client.submit(embed_task, settings, prepare,
                                   [item[1:] for item in batch], retries=retries, pure=False,
                                   key=f"drl-embed-{run_id}-{count}")
            in_flight[future] = batch
            done_with.add(future)
            count += 1

    try:
        submit_more()
        for future in done_with:
            batch = in_flight.pop(future)
            result = future.result()  # the task's own exception, once its retries are spent
            if "error" in result:
                raise DrlError(result["error"])
            on_batch(batch, result)
            submit_more()
    finally:
        if in_flight:  # interrupted or failed: what is finished is in the cache already
            client.cancel(list(in_flight), force=True)
    return count
