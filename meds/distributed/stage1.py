"""Stage 1 of MeDS sharded over Ray actors (``memory_scores(..., workers=N)``).

Two ways to split the ``(N, L, D)`` training features of one category:

* ``shard="queries"``: the features go into the object store once (``ray.put``); every
  actor maps them (zero-copy on its node) as the whole memory and scores whole chunks of
  query images, the same ``images_per_chunk`` chunks and the same kernel calls
  (:meth:`~meds.method.memory.Stage1Plan.score_images`) as the local loop. The result is
  **bit-identical** to the single-process call with the same seed.
* ``shard="memory"``: every actor holds only its share of the memory *images* (each
  shard ``ray.put`` once) and returns, per query chunk, its per-image-minimum columns
  ``(rows, G_shard)``; the driver concatenates them in image order and reduces over the
  banks (:func:`~meds.kernels.ops.reduce_banks`, or
  :func:`~meds.kernels.ops.expected_min_distance` for ``n_banks="exact"``). A bank is a
  union of whole images, so no top-k merge is needed: the concatenation is the very
  ``(rows, G)`` matrix the local kernel computes (a minimum does not depend on the order
  it is taken in), and the same reduction code runs on it. The result is bit-identical
  too where the kernel computes a (query, memory row) distance the same way wherever the
  row sits in the memory, as the CPU kernel does (the tests check equality); other
  kernels are bounded by float32 round-off of that one distance.

Memory per actor (float32, ``c = images_per_chunk * L`` query rows, ``W`` actors):

* queries: ``N*L*D*4`` bytes of memory (shared by the actors of a node through the
  object store) + the ``(c, N)`` group minima and their bank reduction (about
  ``3*c*N*4``) + the kernel's tiles;
* memory: ``ceil(N/W)*L*D*4`` bytes of memory shard + two query chunks ``2*c*D*4``
  + the ``(c, ceil(N/W))`` minima + the kernel's tiles. The driver holds the features it
  was given and one ``(c, N)`` concatenation at a time.

Actors are restarted (``max_restarts``) and their calls retried (``max_task_retries``)
when a worker dies. They keep nothing but a cache of the last arrays they fetched, so a
restarted actor fetches them again and repeats the same computation.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from . import connect

if TYPE_CHECKING:  # pragma: no cover
    from ..method.memory import Stage1Plan

#: Restarts of a dead actor and retries of its calls.
MAX_RESTARTS = 2


def _tensor(array: np.ndarray, device: str) -> torch.Tensor:
    """A tensor over an object-store array (read-only; the kernels never write inputs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


def _device(use_cuda: bool) -> str:
    return "cuda" if use_cuda and torch.cuda.is_available() else "cpu"


class _Stage1Actor:
    """One stage-1 worker. Stateless apart from a cache of the arrays it was last given
    (by object id), so it serves any call, any category, and a restarted actor simply
    loads them again. Arrays arrive as ``[ref]`` (a list, so Ray does not resolve them)
    and are fetched only on a cache miss."""

    def __init__(self, use_cuda: bool):
        self.device = _device(use_cuda)
        self.key, self.held = None, None

    def _load(self, box: list, build):
        import ray  # noqa: PLC0415

        ref = box[0]
        if self.key != ref.hex():
            self.key, self.held = None, None  # free the previous arrays first
            self.held, self.key = build(ray.get(ref)), ref.hex()
        return self.held

    def release(self) -> None:
        self.key, self.held = None, None

    def score(self, box: list, plan: "Stage1Plan", chunk: tuple) -> tuple:
        """Scores of query images ``chunk = (start, stop)`` against the whole memory."""
        def build(features):
            memory, groups = plan.memory_rows(_tensor(features, self.device))
            banks = None if plan.banks is None else torch.as_tensor(plan.banks, device=self.device)
            return memory, groups, banks

        memory, groups, banks = self._load(box, build)
        start, stop = chunk
        return start, stop, plan.score_images(memory, groups, banks, start, stop).cpu().numpy()

    def group_min(self, box: list, first: int, plan: "Stage1Plan", queries: np.ndarray,
                  query_images: np.ndarray) -> np.ndarray:
        """``(rows, n)`` nearest distance of the queries to memory images ``[first, first + n)``."""
        from ..kernels import ops  # noqa: PLC0415

        def build(shard):
            n = int(shard.shape[0])
            memory = _tensor(shard, self.device).reshape(n * plan.n_patches, shard.shape[-1])
            return memory, torch.arange(n, device=self.device).repeat_interleave(plan.n_patches), n

        memory, groups, n = self._load(box, build)
        # Shard-local image ids; a query image outside the shard excludes nothing.
        local = torch.as_tensor(query_images - first, device=self.device)
        out = ops.group_min_distance(_tensor(queries, self.device), memory, groups, n, metric=plan.metric,
                                     query_groups=local, exclude_self=plan.exclude_self)
        return out.cpu().numpy()


class Stage1Workers:
    """A set of Ray actors for stage 1, reusable across calls (e.g. one fit per category).

    ``memory_scores(..., workers=N)`` starts ``N`` actors for the call and stops them after;
    passing ``workers=Stage1Workers(N)`` instead keeps them (and their imported torch)
    between calls. They hold their CPUs/GPUs until :meth:`close` (or the ``with`` block
    ends).

    Args:
        n: Number of actors.
        num_cpus: CPUs each actor requests (its kernel threads).
        num_gpus: GPUs each actor requests; an actor with a GPU computes on it.
        address: Ray address to join if Ray is not initialised yet (default: local).
    """

    def __init__(self, n: int, *, num_cpus: float = 1, num_gpus: float = 0, address: Optional[str] = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Stage1Workers: n must be an int >= 1, got {n!r}")
        self.ray = connect(address, what="stage-1 workers")
        actor = self.ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=MAX_RESTARTS,
                                max_task_retries=MAX_RESTARTS)(_Stage1Actor)
        self.actors = [actor.remote(num_gpus > 0) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.actors)

    def release(self) -> None:
        """Let the actors drop the arrays of the last call (frees the object store)."""
        self.ray.get([a.release.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []

    def __enter__(self) -> "Stage1Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sharded_memory_scores(
    features: torch.Tensor,
    plan: "Stage1Plan",
    *,
    workers: Union[int, Stage1Workers],
    shard: str = "queries",
    progress: bool = True,
) -> torch.Tensor:
    """Stage-1 scores ``(N, L)`` computed by Ray actors (see the module doc).

    Args:
        features: ``(N, L, D)`` float32 training features (CPU or CUDA).
        plan: Banks, chunks and options (from :func:`~meds.method.memory.memory_scores`).
        workers: Number of actors to start for this call (each requests 1 CPU, and 1 GPU
            when ``features`` is on CUDA), or a :class:`Stage1Workers` to use.
        shard: ``"queries"`` or ``"memory"``.
        progress: A progress bar over the query chunks.

    Returns:
        ``(N, L)`` float32 on the device of ``features`` (NaN where a patch had no
        eligible bank; :func:`~meds.method.memory.memory_scores` fills those).
    """
    owned = not isinstance(workers, Stage1Workers)
    pool = Stage1Workers(int(workers), num_gpus=1 if features.is_cuda else 0) if owned else workers
    host = features.detach().to("cpu", torch.float32).contiguous().numpy()
    try:
        run = _by_queries if shard == "queries" else _by_memory
        scores = run(pool, host, plan, progress)
    finally:
        if owned:
            pool.close()
        else:
            pool.release()
    return torch.from_numpy(scores).to(features.device)


def _by_queries(pool: Stage1Workers, host: np.ndarray, plan: "Stage1Plan", progress: bool) -> np.ndarray:
    from ray.util import ActorPool  # noqa: PLC0415

    chunks = plan.chunks()
    box = [pool.ray.put(host)]  # once; every actor maps the same object
    scores = np.empty((plan.n_images, plan.n_patches), dtype=np.float32)
    results = ActorPool(pool.actors).map_unordered(lambda a, chunk: a.score.remote(box, plan, chunk), chunks)
    for start, stop, part in tqdm(results, total=len(chunks), desc="stage 1: memory ensemble (ray)",
                                  unit="chunk", disable=not progress):
        scores[start:stop] = part
    return scores


def _by_memory(pool: Stage1Workers, host: np.ndarray, plan: "Stage1Plan", progress: bool) -> np.ndarray:
    ray = pool.ray
    n_images, n_patches, dim = host.shape
    bounds = np.linspace(0, n_images, min(len(pool), n_images) + 1).round().astype(int)
    shards = [(int(a), [ray.put(host[a:b])]) for a, b in zip(bounds[:-1], bounds[1:])]
    image_ids = np.repeat(np.arange(n_images), n_patches)
    scores = np.empty((n_images, n_patches), dtype=np.float32)

    def submit(chunk):
        start, stop = chunk
        rows = slice(start * n_patches, stop * n_patches)
        queries, ids = ray.put(host[start:stop].reshape(-1, dim)), ray.put(image_ids[rows])
        return chunk, [a.group_min.remote(box, first, plan, queries, ids) for a, (first, box) in zip(pool.actors, shards)]

    chunks = plan.chunks()
    # The next chunk is queued while the driver reduces this one, so actors never wait on it.
    pending = [submit(chunks[0])]
    for i in tqdm(range(len(chunks)), desc="stage 1: memory ensemble (ray, memory shards)",
                  unit="chunk", disable=not progress):
        if i + 1 < len(chunks):
            pending.append(submit(chunks[i + 1]))
        (start, stop), futures = pending.pop(0)
        nearest = torch.from_numpy(np.concatenate(ray.get(futures), axis=1))
        scores[start:stop] = plan.reduce(nearest).reshape(stop - start, n_patches).numpy()
    return scores
