"""The noisy-training protocol: defective test images moved into the training set.

Two ways to build a noisy split:

* :func:`contaminate` draws ``round(ratio * #normal training images)`` defective test
  images with a seeded :class:`numpy.random.Generator` (the ratio counts
  ``#defects / #normal train``, as in the MeDS and SoftPatch code; capped by the number
  of defects that exist, with a warning). The draws are nested: with one seed, the
  defects injected at 10 % are a subset of those injected at 20 %.
* :func:`apply_split_list` reproduces a published split list, e.g. the MeDS authors'
  ``train_mvtec_nr10_seed_0.csv`` (rows ``filename,clsname``), read with
  :func:`load_split_list`.

``overlap=False`` (default, SoftPatch's "no-overlap") removes the injected images from
the test split; ``overlap=True`` (the official MeDS code) leaves the test split as it is.
The returned :class:`CategoryData` records the protocol in ``.noise``
(``str(data.noise)`` -> ``"noise=20% no-overlap seed=0"``) and the evaluation-only
ground truth in ``.train_is_noise``.

Note that the injected images keep their file paths (``.../test/<defect>/...``); code
that must stay blind to the labels should look at pixels only, not at path names.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from .images import DataWarning
from .types import CategoryData, NoiseSetting, Sample

__all__ = ["contaminate", "load_split_list", "apply_split_list", "NoiseSetting", "parse_split_list_name"]


def _noise_flags(data: CategoryData) -> np.ndarray:
    if data.train_is_noise is not None:
        return np.asarray(data.train_is_noise, dtype=bool)
    return np.asarray([s.label == 1 for s in data.train], dtype=bool)


def injected_count(ratio: float, n_normal: int) -> int:
    """How many defective images :func:`contaminate` asks for at ``ratio`` (of the normals)."""
    return int(round(ratio * n_normal))


def contaminate(data: CategoryData, ratio: float, seed: int, overlap: bool = False) -> CategoryData:
    """Move randomly chosen defective test images into the training set.

    Args:
        data: A (clean) category split.
        ratio: ``#defects / #normal training images``, >= 0 (e.g. 0.1, 0.2, 0.4).
        seed: Seed of the draw (``numpy.random.default_rng(seed)``).
        overlap: Keep the injected images in the test split as well (official MeDS
            protocol). Default: remove them (no-overlap).

    Returns:
        A new :class:`CategoryData`: ``train`` = the original training samples followed by
        the injected defects; ``train_is_noise`` marks the latter; ``noise`` describes the
        protocol. ``data`` is not modified. ``ratio == 0`` gives the clean split.

    Raises:
        ValueError: ``ratio`` negative or not finite.
        TypeError: ``seed`` not an integer.

    Warns:
        DataWarning: Fewer defects exist than requested (the count is capped).
    """
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"contaminate: ratio must be a number >= 0, got {ratio!r}") from None
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"contaminate: ratio must be a finite number >= 0, got {ratio!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"contaminate: seed must be an int, got {type(seed).__name__} {seed!r}")
    flags = _noise_flags(data)
    n_normal = int((~flags).sum())
    requested = injected_count(r, n_normal)
    defect_idx = [i for i, s in enumerate(data.test) if s.label == 1]
    n = requested
    if requested > len(defect_idx):
        warnings.warn(
            f"contaminate: category {data.name!r}: ratio {r:g} x {n_normal} normal training images asks "
            f"for {requested} defective images but only {len(defect_idx)} exist; injecting "
            f"{len(defect_idx)} (effective ratio {len(defect_idx) / max(n_normal, 1):.3f})",
            DataWarning,
            stacklevel=2,
        )
        n = len(defect_idx)
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(defect_idx))  # nested draws: a larger ratio extends the smaller one
    chosen = sorted(defect_idx[j] for j in order[:n])
    injected = [data.test[i] for i in chosen]
    taken = set(chosen)
    test = list(data.test) if overlap else [s for i, s in enumerate(data.test) if i not in taken]
    return CategoryData(
        name=data.name,
        train=list(data.train) + injected,
        test=test,
        train_is_noise=np.concatenate([flags, np.ones(len(injected), dtype=bool)]),
        noise=NoiseSetting(ratio=r, seed=int(seed), overlap=bool(overlap), n_injected=len(injected)),
    )


# --------------------------------------------------------------------------- split lists
def load_split_list(csv_path: str | Path) -> dict[str, list[str]]:
    """Read a split list CSV (header ``filename,clsname`` or ``filename,class``).

    Returns:
        ``{category: [filename, ...]}`` in file order, e.g.
        ``{"bottle": ["bottle/train/good/000.png", "bottle/test/broken_large/003.png", ...]}``.
    """
    p = Path(csv_path)
    if not p.is_file():
        raise FileNotFoundError(f"load_split_list: {str(p)!r} not found")
    out: dict[str, list[str]] = {}
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"load_split_list: {str(p)!r} is empty")
        cols = [h.strip().lower() for h in header]
        if "filename" not in cols:
            raise ValueError(f"load_split_list: {str(p)!r} has header {header}; expected 'filename,clsname'")
        fi = cols.index("filename")
        ci = next((cols.index(c) for c in ("clsname", "class", "category", "object") if c in cols), None)
        for lineno, row in enumerate(reader, start=2):
            if not row or not any(x.strip() for x in row):
                continue
            name = row[fi].strip().replace("\\", "/")
            if ci is not None and ci < len(row) and row[ci].strip():
                cls = row[ci].strip()
            else:
                cls = PurePosixPath(name).parts[0] if "/" in name else ""
            if not name or not cls:
                raise ValueError(f"load_split_list: {str(p)!r} line {lineno}: cannot read {row!r}")
            out.setdefault(cls, []).append(name)
    return out


def parse_split_list_name(name: str) -> tuple[float | None, int | None]:
    """``"train_mvtec_nr10_seed_0.csv"`` -> ``(0.1, 0)``; unknown parts -> ``None``."""
    m = re.search(r"nr(\d+(?:\.\d+)?)", name)
    s = re.search(r"seed_?(\d+)", name)
    return (float(m.group(1)) / 100.0 if m else None), (int(s.group(1)) if s else None)


def _norm_parts(path: str) -> tuple[str, ...]:
    parts = [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".")]
    return tuple(parts)


class _Matcher:
    """Maps listed file names onto samples by the longest unambiguous path suffix.

    Each sample is indexed by the suffixes (2..6 components) of its real path and of
    its canonical name ``<category>/<train|test>/<defect_type>/<file>`` (plus
    ``.../bad/<file>`` for defects and ``.../good/<file>`` for normals, which is how the
    MVTec-style VisA copy names them), exactly and lower-cased.
    """

    def __init__(self, pool: list[tuple[str, Sample]]):
        self.exact: dict[tuple[str, ...], set[int]] = {}
        self.lower: dict[tuple[str, ...], set[int]] = {}
        for i, (role, s) in enumerate(pool):
            base = Path(s.path).name
            keys = [_norm_parts(s.path), (s.category, role, s.defect_type, base)]
            keys.append((s.category, role, "bad" if s.label == 1 else "good", base))
            for key in keys:
                for n in range(2, min(6, len(key)) + 1):
                    suf = key[-n:]
                    self.exact.setdefault(suf, set()).add(i)
                    self.lower.setdefault(tuple(x.lower() for x in suf), set()).add(i)

    def find(self, name: str) -> int | None:
        parts = _norm_parts(name)
        for table, key in ((self.exact, parts), (self.lower, tuple(x.lower() for x in parts))):
            for n in range(min(6, len(key)), 1, -1):
                hits = table.get(key[-n:])
                if hits is not None and len(hits) == 1:
                    return next(iter(hits))
        return None


def apply_split_list(
    data: CategoryData,
    filenames: Sequence[str] | Mapping[str, Sequence[str]] | str | Path,
    overlap: bool = False,
    *,
    source: str | None = None,
) -> CategoryData:
    """Make the training set exactly the listed files (a published noisy split).

    Args:
        data: The clean split of one category (any loader; VisA in either layout).
        filenames: The listed training files of this category (e.g.
            ``load_split_list(csv)[data.name]``), or the whole mapping returned by
            :func:`load_split_list`, or the CSV path itself. Names are matched against
            the samples by their trailing path components (``bottle/test/crack/003.png``),
            so the dataset root may be anywhere.
        overlap: Keep listed test images in the test split too (official MeDS protocol).
            Default: remove them (no-overlap).
        source: Name recorded in ``.noise`` (default: the CSV's file name, if given).

    Returns:
        A new :class:`CategoryData` whose ``train`` holds the listed samples (those from
        the training split first, in their order, then those from the test split, in
        theirs) and whose ``train_is_noise`` marks the defective ones.

    Raises:
        ValueError: A listed name matches no sample (or several); the message names
            them. Also when the mapping/CSV has no entry for ``data.name``.
    """
    if isinstance(filenames, (str, Path)):
        p = Path(filenames)
        source = source or p.name
        filenames = load_split_list(p)
    if isinstance(filenames, Mapping):
        if data.name not in filenames:
            raise ValueError(
                f"apply_split_list: the split list has no entries for category {data.name!r}; "
                f"it lists {sorted(filenames)}"
            )
        filenames = filenames[data.name]
    names = [str(n) for n in filenames]
    if not names:
        raise ValueError(f"apply_split_list: empty file list for category {data.name!r}")
    pool = [("train", s) for s in data.train] + [("test", s) for s in data.test]
    matcher = _Matcher(pool)
    matched: dict[int, str] = {}
    unmatched: list[str] = []
    for name in names:
        idx = matcher.find(name)
        if idx is None:
            unmatched.append(name)
        else:
            matched.setdefault(idx, name)
    if unmatched:
        shown = ", ".join(repr(u) for u in unmatched[:10])
        more = f" (and {len(unmatched) - 10} more)" if len(unmatched) > 10 else ""
        raise ValueError(
            f"apply_split_list: {len(unmatched)} of {len(names)} listed files of category {data.name!r} "
            f"match no sample of the dataset: {shown}{more}"
        )
    flags = _noise_flags(data)
    n_train = len(data.train)
    keep_train = [i for i in range(n_train) if i in matched]
    moved = [i for i in range(n_train, len(pool)) if i in matched]
    train = [data.train[i] for i in keep_train] + [pool[i][1] for i in moved]
    noise = [bool(flags[i]) for i in keep_train] + [pool[i][1].label == 1 for i in moved]
    moved_test = {i - n_train for i in moved}
    test = list(data.test) if overlap else [s for j, s in enumerate(data.test) if j not in moved_test]
    ratio, seed = parse_split_list_name(source) if source else (None, None)
    n_inj = int(sum(noise))
    return CategoryData(
        name=data.name,
        train=train,
        test=test,
        train_is_noise=np.asarray(noise, dtype=bool),
        noise=NoiseSetting(ratio=ratio, seed=seed, overlap=bool(overlap), n_injected=n_inj,
                           source=source or "custom list"),  # fmt: skip
    )
