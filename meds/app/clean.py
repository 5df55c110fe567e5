"""``meds clean``: a cleaned copy of a category in the MVTec AD layout, for any detector.

For one fitted category it writes ``<out>/<category>/``::

    train/good/<name>                 the training images the model trusts (``trusted_``)
    suspicious/<rank>_<name>          the others, most suspicious first (rank 1)
    test/<defect type>/<name>         the test split as loaded, untouched
    ground_truth/<defect type>/<stem>_mask<ext>   its masks, where there are any
    selection.csv                     file, score, rank, kept, label_source, written_as

Entries are symbolic links to the original files (absolute targets) or copies
(``copy=True``). ``<name>`` is the image's label key (:func:`meds.data.labels.label_keys`:
the base name, or more of its path with ``/`` written as ``__`` where base names repeat).

The folder is built next to its target (``.<category>.new-*``) and swapped in with one
``renameat2(RENAME_EXCHANGE)`` where the system has it (Linux), else with two renames: a
reader sees the previous run's folder or the new one, never a mix of the two. Leftovers of
an interrupted run are removed by the next one, which holds the folder's lock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..atomic_io import atomic_write_csv, current_umask
from ..data import CategoryData
from ..data.labels import label_keys
from ..locking import folder_lock

__all__ = ["write_clean", "replace_folder"]

_NEW, _OLD = ".new-", ".old-"


def _place(source: str, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(source, target)
    else:
        os.symlink(os.path.abspath(source), target)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); ``False`` where unsupported."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # this kernel or file system cannot exchange
    raise OSError(error, os.strerror(error), str(b))


def replace_folder(built: Path, target: Path) -> None:
    """Put folder ``built`` at ``target``, replacing a previous ``target`` as one step."""
    if not target.exists():
        os.rename(built, target)
        return
    if _exchange(built, target):
        shutil.rmtree(built)  # now holds the previous run
        return
    old = target.with_name(f".{target.name}{_OLD}{os.getpid()}")
    os.rename(target, old)
    os.rename(built, target)
    shutil.rmtree(old)


def _remove_leftovers(parent: Path, name: str) -> None:
    for path in parent.glob(f".{name}.*-*"):
        if path.is_dir() and (_NEW in path.name or _OLD in path.name):
            shutil.rmtree(path)


def write_clean(model, data: CategoryData, out: Path, *, labels: Optional[Sequence[Optional[str]]] = None,
                copy: bool = False) -> dict:
    """Write the cleaned category ``data`` (fitted ``model``) into ``out/<data.name>``.

    Args:
        model: A fitted :class:`~meds.method.model.MeDS` (``training_scores_``, ``trusted_``).
        data: The split it was fitted on (``train`` in the same order).
        out: The clean root (created; locked while it is written).
        labels: The per-image labels the fit used (``"defective"``, ``"good"``, ``None``),
            recorded in ``selection.csv``'s ``label_source``.
        copy: Copy the files instead of linking them.

    Returns:
        ``{"dir": Path, "kept": int, "suspicious": int, "test": int}``.
    """
    out = Path(out)
    paths = data.train_paths()
    scores = np.asarray(model.training_scores_, dtype=np.float64)
    kept = np.asarray(model.trusted_, dtype=bool)
    if scores.shape != (len(paths),) or kept.shape != (len(paths),):
        raise ValueError(f"write_clean: the model holds {scores.shape[0]} training images, "
                         f"category {data.name!r} has {len(paths)}")
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(paths), dtype=np.int64)
    rank[order] = np.arange(1, len(paths) + 1)
    names = [key.replace("/", "__") for key in label_keys(paths)]
    width = max(4, len(str(len(paths))))

    with folder_lock(out, "--out"):
        _remove_leftovers(out, data.name)
        built = Path(tempfile.mkdtemp(prefix=f".{data.name}{_NEW}", dir=out))
        try:
            rows = []
            for i in order:
                written = (f"train/good/{names[i]}" if kept[i]
                           else f"suspicious/{rank[i]:0{width}d}_{names[i]}")
                _place(paths[i], built / written, copy)
                source = "meds" if labels is None or labels[i] is None else f"labelled {labels[i]}"
                rows.append([paths[i], repr(float(scores[i])), int(rank[i]), "true" if kept[i] else "false",
                             source, written])
            for sample, name in zip(data.test, _test_names(data)):
                _place(sample.path, built / "test" / sample.defect_type / name, copy)
                if sample.mask_path is not None:
                    stem = os.path.splitext(name)[0]
                    mask_ext = os.path.splitext(sample.mask_path)[1]
                    _place(sample.mask_path, built / "ground_truth" / sample.defect_type / f"{stem}_mask{mask_ext}",
                           copy)
            for folder in ("train/good", "suspicious"):  # both exist even when empty
                (built / folder).mkdir(parents=True, exist_ok=True)
            atomic_write_csv(["file", "score", "rank", "kept", "label_source", "written_as"], rows,
                             built / "selection.csv")
            os.chmod(built, 0o777 & ~current_umask())  # mkdtemp makes it 0700
            replace_folder(built, out / data.name)
        except BaseException:
            shutil.rmtree(built, ignore_errors=True)
            raise
    return {"dir": out / data.name, "kept": int(kept.sum()), "suspicious": int((~kept).sum()),
            "test": len(data.test)}


def _test_names(data: CategoryData) -> list[str]:
    """A unique name for each test image inside its ``test/<defect type>/`` folder."""
    names = [""] * len(data.test)
    for kind in {s.defect_type for s in data.test}:
        which = [i for i, s in enumerate(data.test) if s.defect_type == kind]
        for i, key in zip(which, label_keys([data.test[i].path for i in which])):
            names[i] = key.replace("/", "__")
    return names
