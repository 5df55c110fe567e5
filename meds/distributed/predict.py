"""``meds predict RUN IMAGES... --ray``: score images with Ray Data over an actor pool.

The image paths become a Ray Data dataset of *chunks* of ``batch_size`` consecutive paths
(the model's own batch size), so every chunk is exactly one of the batches the local
``MeDS.predict`` runs: batch composition moves float round-off in the network, and with
the same batches the scores and maps are the local ones, bit for bit. ``map_batches``
sends the chunks to a pool of actors (``compute=ActorPoolStrategy``), each of which loads
the model once and decodes its images with the same decoder as the local path. Results
carry their input index and are put back in input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import connect


class _Scorer:
    """A Ray Data actor: loads the model once, scores one chunk of paths per call."""

    def __init__(self, model_dir: str, device: str):
        from ..method.model import MeDS  # noqa: PLC0415

        self.model = MeDS.load(model_dir, device=device, verbose=False)

    def __call__(self, batch: dict) -> dict:
        index, scores, labels, maps = [], [], [], []
        for first, paths in zip(batch["first"], batch["paths"]):
            pred = self.model.predict([str(p) for p in paths])
            index.extend(range(int(first), int(first) + len(paths)))
            scores.append(pred.scores)
            labels.append(pred.labels)
            maps.extend(pred.maps)
        out_maps = np.empty(len(maps), dtype=object)
        out_maps[:] = maps  # maps differ in size with the images: a ragged column
        return {"index": np.asarray(index, dtype=np.int64), "score": np.concatenate(scores),
                "label": np.concatenate(labels), "map": out_maps}


def predict_on_ray(model_dir: Path, paths: Sequence[str], *, batch_size: int, device: str = "auto",
                   workers: Optional[int] = None, address: Optional[str] = None, num_cpus: float = 1,
                   num_gpus: float = 0, progress: bool = True) -> tuple:
    """Scores ``(N,)``, labels ``(N,)`` and maps (each image's size) of ``paths``, in order.

    Args:
        model_dir: A model folder written by ``MeDS.save``.
        paths: Image paths (visible from every worker).
        batch_size: The model's batch size (the chunk of paths one call scores).
        device: Device of each actor's model (``"auto"``: its GPU if it has one).
        workers: Actors in the pool; default the cluster's CPUs divided by ``num_cpus``.
        address: Ray address to join (default: a local instance).
        num_cpus: CPUs per actor.
        num_gpus: GPUs per actor.
        progress: Ray Data's progress bars.
    """
    ray = connect(address, what="--ray")
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))
    chunks = [{"first": i, "paths": [str(p) for p in paths[i:i + batch_size]]}
              for i in range(0, len(paths), batch_size)]
    workers = max(1, min(workers, len(chunks)))
    ray.data.DataContext.get_current().enable_progress_bars = progress
    dataset = ray.data.from_items(chunks, override_num_blocks=len(chunks)).map_batches(
        _Scorer, fn_constructor_kwargs={"model_dir": str(Path(model_dir).resolve()), "device": device},
        batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=num_cpus, num_gpus=num_gpus,
    )
    rows = sorted(dataset.iter_rows(), key=lambda row: int(row["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(paths))):
        raise RuntimeError(f"predict --ray: got {len(rows)} results for {len(paths)} images")
    scores = np.asarray([r["score"] for r in rows], dtype=np.float64)
    labels = np.asarray([r["label"] for r in rows], dtype=bool)
    return scores, labels, [np.asarray(r["map"]) for r in rows]
