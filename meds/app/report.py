"""The audit report (MeDS's "active label correction") and prediction outputs.

:func:`write_audit` ranks a fitted model's training images by how suspicious it finds them;
:func:`write_audit_report` writes that ranked list of suspicious *training* images that a
person inspects first to clean their data: ``audit.csv``, overlay thumbnails under
``thumbs/``, the originals under ``originals/`` and a self-contained static ``index.html``
(inline CSS and one inline script, no external URLs) where the person marks images
defective or good and downloads the marks as ``labels.csv`` (:mod:`meds.app.review`).
:func:`write_prediction_outputs` writes ``predictions.csv`` and one heat-map overlay PNG per
image (used by ``meds predict``). Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..atomic_io import atomic_write_csv, atomic_write_text
from ..data import CategoryData, read_image
from ..data.labels import label_keys
from .review import REVIEW_CSS, REVIEW_JS
from .viz import colormap, overlay, save_png, thumbnail

__all__ = ["AuditEntry", "write_audit", "write_audit_report", "write_prediction_outputs", "sanitize_name"]

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass
class AuditEntry:
    """One training image in the audit report.

    Attributes:
        rank: 1 = most suspicious; ``None`` = assigned from the score order.
        path: The image's file path (shown as its file name, full path on hover).
        score: Suspicion score, higher = more suspicious (e.g. the final ``eta``).
        selected: Whether the final model trusted (trained on) the image.
        image: Optional ``(H, W, 3)`` uint8 image for the thumbnail.
        anomaly_map: Optional ``(h, w)`` float map drawn over the thumbnail.
        label: Ground truth if known (1 = known defect, 0 = known good), else ``None``.
        mark: The person's label the fit used (``"defective"`` / ``"good"``), shown as the
            initial mark of the page, else ``None``.
    """

    rank: Optional[int]
    path: str
    score: float
    selected: bool
    image: Optional[np.ndarray] = None
    anomaly_map: Optional[np.ndarray] = None
    label: Optional[int] = None
    mark: Optional[str] = None


# ----------------------------------------------------------------------------- helpers

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_name(name: str, max_len: int = 80) -> str:
    """Keep ASCII letters, digits and ``._-``; runs of anything else become ``_``."""
    out = _UNSAFE.sub("_", str(name)).strip("_") or "image"
    return out[:max_len]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return ""
    value = float(value)
    if math.isnan(value):
        return "nan"
    return f"{value:.4g}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _csv_float(value: float) -> str:
    return repr(float(value))


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img")


def _finite_range(maps: Iterable[Optional[np.ndarray]]) -> tuple[Optional[float], Optional[float]]:
    lo, hi = math.inf, -math.inf
    for m in maps:
        if m is None:
            continue
        a = np.asarray(m, dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    if lo > hi:
        return None, None
    return lo, hi


def _load_rgb(path: PathLike) -> Optional[np.ndarray]:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError):
        return None


def _sort_key(item: tuple[int, AuditEntry]):
    i, e = item
    s = float(e.score)
    return (math.isnan(s), -s if not math.isnan(s) else 0.0, e.rank if e.rank is not None else math.inf, i)


def _cut_index(entries: Sequence[AuditEntry], cut: Optional[float]) -> Optional[int]:
    """Position of the selection-cut marker in the sorted entries (marker goes before it)."""
    if not entries:
        return None
    if cut is not None:
        # Selection keeps eta < cut, so entries with score >= cut sit above the marker.
        return sum(1 for e in entries if float(e.score) >= cut)
    if all(e.selected for e in entries):
        return None
    for i, e in enumerate(entries):
        if e.selected and i > 0 and not entries[i - 1].selected:
            return i
    return len(entries) if not entries[0].selected else None


def _panel(entry: AuditEntry, size: int, vmin, vmax, alpha: float) -> Optional[np.ndarray]:
    if entry.image is not None:
        thumb = thumbnail(entry.image, size)
        if entry.anomaly_map is not None:
            thumb = overlay(thumb, entry.anomaly_map, vmin=vmin, vmax=vmax, alpha=alpha)
        return thumb
    if entry.anomaly_map is not None:
        return thumbnail(colormap(np.asarray(entry.anomaly_map, dtype=np.float64), vmin, vmax), size)
    return None


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}
.summary{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin-bottom:1em}
.summary p{margin:.2em 0}
.settings{border-collapse:collapse;margin-top:.5em;font-size:.9em}
.settings th,.settings td{border:1px solid #ddd;padding:.15em .6em;text-align:left;vertical-align:top}
.settings th{background:#f0f0f0;font-weight:600}
.tag{display:inline-block;padding:.05em .5em;border-radius:1em;font-size:.85em;white-space:nowrap}
.tag.no{background:#b00020;color:#fff}
.tag.yes{background:#2e7d32;color:#fff}
.tag.defect{background:#6a1b9a;color:#fff}
.tag.good{background:#ddd;color:#333}
.muted{color:#777;font-size:.85em}
"""


def _settings_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float):
        return _fmt(value)
    return str(value)


# ----------------------------------------------------------------------------- audit report


def write_audit_report(
    entries: Sequence[AuditEntry],
    out_dir: PathLike,
    *,
    title: str = "meds audit",
    threshold: Optional[float] = None,
    cut: Optional[float] = None,
    settings: Optional[Mapping[str, Any]] = None,
    thumbnails: bool = True,
    max_thumbnails: int = 200,
    thumb_size: int = 160,
    alpha: float = 0.5,
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    progress: bool = False,
) -> dict:
    """Write the audit report of suspicious training images into ``out_dir``.

    Entries are sorted by score, most suspicious first (ties keep their given rank/order);
    entries whose ``rank`` is ``None`` get their 1-based position as rank.

    Args:
        entries: One :class:`AuditEntry` per training image, in any order.
        out_dir: Output folder (created).
        title: Page title.
        threshold: Optional image-score threshold; scores above it are highlighted and counted.
        cut: The ``eta`` value where the selection cut fell (kept iff ``score < cut``). The
            marker row sits between the entries with ``score >= cut`` and ``score < cut``.
            Without ``cut``, it sits at the first untrusted -> trusted boundary.
        settings: Shown as a small key/value table (category, model settings, noise
            setting, seeds, ...); nested values are shown as JSON.
        thumbnails: Write overlay thumbnails (needs ``image`` and/or ``anomaly_map``).
        max_thumbnails: Only the top this-many entries get thumbnails.
        thumb_size: Longer side of a thumbnail, in pixels.
        alpha: Heat-map weight in the overlays.
        vmin: Colour-scale minimum shared by all thumbnails (default: min over the maps).
        vmax: Colour-scale maximum shared by all thumbnails (default: max over the maps),
            so that heat is comparable across thumbnails.
        progress: Show a tqdm progress bar while writing thumbnails.

    Returns:
        ``{"dir": Path, "html": Path, "csv": Path, "thumbs": list[Path], "originals": list[Path]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(enumerate(entries), key=_sort_key)
    rows: list[AuditEntry] = []
    for pos, (_, e) in enumerate(order):
        rank = int(e.rank) if e.rank is not None else pos + 1
        rows.append(dataclasses.replace(e, rank=rank, path=str(e.path), score=float(e.score), selected=bool(e.selected)))
    has_label = any(e.label is not None for e in rows)
    cut_at = _cut_index(rows, None if cut is None else float(cut))

    # audit.csv
    header = ["rank", "path", "score", "selected"] + (["label"] if has_label else [])
    csv_rows = []
    for e in rows:
        row = [e.rank, e.path, _csv_float(e.score), "true" if e.selected else "false"]
        if has_label:
            row.append("" if e.label is None else int(e.label))
        csv_rows.append(row)
    csv_path = atomic_write_csv(header, csv_rows, out / "audit.csv")

    # thumbs/NNNN.png
    thumb_paths: list[Path] = []
    original_paths: list[Path] = []
    thumb_rel: dict[int, tuple[str, int, int]] = {}
    original_rel: dict[int, str] = {}
    if thumbnails and max_thumbnails > 0:
        todo = [(i, e) for i, e in enumerate(rows[:max_thumbnails]) if e.image is not None or e.anomaly_map is not None]
        if todo:
            lo, hi = _finite_range(e.anomaly_map for _, e in todo)
            lo = lo if vmin is None else float(vmin)
            hi = hi if vmax is None else float(vmax)
            if lo is not None and hi is not None and lo > hi:
                lo = hi
            width = max(4, len(str(max(e.rank for e in rows))))
            used: set[str] = set()
            for i, e in _progress(todo, len(todo), "audit thumbnails", progress):
                panel = _panel(e, thumb_size, lo, hi, alpha)
                if panel is None:
                    continue
                name = f"{e.rank:0{width}d}.png"
                if name in used:
                    name = f"{e.rank:0{width}d}_{i}.png"  # duplicate given ranks
                used.add(name)
                thumb_paths.append(save_png(panel, out / "thumbs" / name))
                thumb_rel[i] = (f"thumbs/{name}", panel.shape[1], panel.shape[0])
                if e.image is not None and e.anomaly_map is not None:  # shown beside the heat map
                    original_paths.append(save_png(thumbnail(e.image, thumb_size), out / "originals" / name))
                    original_rel[i] = f"originals/{name}"

    # index.html
    n = len(rows)
    n_flagged = sum(1 for e in rows if not e.selected)
    keys = label_keys([e.path for e in rows])  # the names labels.csv gets; also the page's storage id
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}{REVIEW_CSS}</style>",
        "</head>",
        f'<body data-report="{_report_id(title, keys)}">',
        f"<h1>{_esc(title)}</h1>",
        '<section class="summary">',
        f"<p><strong>{n}</strong> training images; <strong>{n_flagged}</strong> flagged as suspicious "
        f"(not trusted by the final model), <strong>{n - n_flagged}</strong> trusted.</p>",
    ]
    if cut is not None:
        parts.append(f"<p>Selection cut: score (&eta;) = <strong>{_esc(_fmt(cut))}</strong>; "
                     f"{_plural(cut_at, 'image')} at or above it.</p>")
    if threshold is not None:
        n_above = sum(1 for e in rows if e.score > float(threshold))
        parts.append(f"<p>Threshold {_esc(_fmt(threshold))}: {_plural(n_above, 'image')} score above it.</p>")
    if has_label:
        known_bad = [e for e in rows if e.label is not None and int(e.label) != 0]
        caught = sum(1 for e in known_bad if not e.selected)
        parts.append(f"<p>Ground truth known for {sum(1 for e in rows if e.label is not None)} images: "
                     f"{len(known_bad)} known defects, of which {caught} were flagged.</p>")
    parts.append('<p class="muted">Most suspicious first. Red borders: not trusted by the final '
                 "model. Thumbnails: image with its heat map (shared colour scale); hover, click or step to "
                 "an image to see the original beside it. Mark images defective or good and download "
                 "labels.csv for <code>meds fit --labels</code> or <code>meds clean --labels</code>; marks "
                 'are kept in this browser. Full details in <a href="audit.csv">audit.csv</a>.</p>')
    if settings:
        parts.append('<table class="settings"><tbody>')
        for key, value in settings.items():
            parts.append(f"<tr><th>{_esc(key)}</th><td>{_esc(_settings_value(value))}</td></tr>")
        parts.append("</tbody></table>")
    parts.append("</section>")

    parts.append('<div class="toolbar"><span id="count"></span>'
                 '<span>show <button data-filter="all">all</button><button data-filter="marked">marked</button>'
                 '<button data-filter="unmarked">unmarked</button></span>'
                 '<button id="download">download labels.csv</button><button id="clear">clear marks</button>'
                 '<span class="keys">keys: j/k or arrows step through the ranking, d defective, g good, u unset '
                 '(then the next image), Esc closes the preview</span></div>')
    cut_text = ("&#9650; flagged as suspicious above &middot; selection cut"
                + (f" (&eta; = {_esc(_fmt(cut))})" if cut is not None else "")
                + " &middot; trusted below &#9660;")
    cut_row = f'<div class="cutline cut" id="cut">{cut_text}</div>'
    parts.append('<div class="grid">')
    for i, e in enumerate(rows):
        if cut_at == i:
            parts.append(cut_row)
        parts.append(_card(e, keys[i], thumb_rel.get(i), original_rel.get(i), threshold))
    if cut_at is not None and cut_at >= n:
        parts.append(cut_row)
    parts.append("</div>")
    parts.append('<aside id="preview" hidden><div class="pair"><img id="preview-orig" alt="original">'
                 '<img id="preview-heat" alt="heat map"></div><p id="preview-name"></p></aside>')
    stamp = datetime.datetime.now().replace(microsecond=0).isoformat(sep=" ")
    parts.append(f'<p class="muted">Written by meds on {_esc(stamp)}.</p>')
    parts.append(f"<script>{REVIEW_JS}</script>")
    parts.append("</body></html>\n")
    html_path = atomic_write_text("\n".join(parts), out / "index.html")
    return {"dir": out, "html": html_path, "csv": csv_path, "thumbs": thumb_paths, "originals": original_paths}


def _report_id(title: str, keys: Sequence[str]) -> str:
    """The page's localStorage id: the same title and images give the same id."""
    digest = hashlib.sha256(title.encode("utf-8"))
    for key in keys:
        digest.update(b"\0" + key.encode("utf-8"))
    return digest.hexdigest()[:16]


def _card(e: AuditEntry, key: str, thumb: Optional[tuple], original: Optional[str], threshold) -> str:
    """One entry of the grid; every value from the data is escaped."""
    if thumb is not None:
        rel, w, h = thumb
        pics = f'<img class="heat" src="{_esc(rel)}" width="{w}" height="{h}" loading="lazy" alt="rank {e.rank}">'
        if original is not None:
            pics += f'<img class="orig" src="{_esc(original)}" loading="lazy" alt="rank {e.rank} original">'
    else:
        pics = '<div class="placeholder">no thumbnail</div>'
    name = os.path.basename(e.path.rstrip("/\\")) or e.path
    above = threshold is not None and e.score > float(threshold)
    trusted = '<span class="tag yes">trusted</span>' if e.selected else '<span class="tag no">not trusted</span>'
    known = ""
    if e.label is not None:
        known = (' <span class="tag defect">known defect</span>' if int(e.label) != 0
                 else ' <span class="tag good">known good</span>')
    given = f' data-given="{_esc(e.mark)}"' if e.mark in ("defective", "good") else ""
    return (f'<div class="entry {"trusted" if e.selected else "untrusted"}" tabindex="0" data-rank="{e.rank}" '
            f'data-score="{_esc(_csv_float(e.score))}" data-key="{_esc(key)}"{given}>{pics}'
            f'<div class="meta"><span class="rank">#{e.rank}</span>'
            f'<span class="score{" above" if above else ""}">{_esc(_fmt(e.score))}</span></div>'
            f'<div class="file" title="{_esc(e.path)}">{_esc(name)}</div><div>{trusted}{known}</div>'
            '<div class="marks"><button class="defective" data-set="defective" title="d">defective</button>'
            '<button class="good" data-set="good" title="g">good</button>'
            '<button class="unset" data-set="" title="u">unset</button></div></div>')


# ----------------------------------------------------------------------------- predictions


def _prediction_scale(maps: Sequence[Optional[np.ndarray]], threshold: Optional[float]):
    """Shared colour scale for prediction overlays; centres ``threshold`` if given."""
    lo, hi = _finite_range(maps)
    if lo is None:
        return None, None
    if threshold is not None and math.isfinite(float(threshold)):
        t = float(threshold)
        half = max(t - lo, hi - t, 1e-12)
        return t - half, t + half
    return lo, hi


def write_prediction_outputs(
    paths: Sequence[PathLike],
    scores: Sequence[float],
    labels: Optional[Sequence[Any]],
    maps: Optional[Sequence[Optional[np.ndarray]]],
    images: Optional[Sequence[Any]],
    out_dir: PathLike,
    threshold: Optional[float] = None,
    *,
    alpha: float = 0.5,
    progress: bool = False,
) -> dict:
    """Write ``predictions.csv`` and one heat-map overlay PNG per image.

    Overlays go to ``out_dir/heatmaps/<index>_<stem>.png`` (index zero-padded to 4+ digits,
    stem reduced to ASCII letters, digits and ``._-``). All overlays share one colour scale;
    with a ``threshold`` the scale is centred on it, so pixels at the threshold are mid-scale
    and hotter colours mean above it.

    Args:
        paths: ``N`` image paths (written to the CSV as given).
        scores: ``(N,)`` image scores.
        labels: ``(N,)`` predicted labels (bool/int); ``None`` = ``score > threshold`` (NaN
            counts as above) if a threshold is given, else left empty.
        maps: ``N`` float maps (any size; resized to the image) or ``None`` for no PNGs;
            individual ``None`` entries are skipped.
        images: ``N`` ``(H, W, 3)`` uint8 arrays, PIL images, or ``None`` entries (then the
            image is read from ``paths[i]``); ``None`` = read all from ``paths``.
        out_dir: Output folder (created).
        threshold: Image-score threshold.
        alpha: Heat-map weight in the overlays.
        progress: Show a tqdm progress bar.

    Returns:
        ``{"dir": Path, "csv": Path, "heatmaps": list[Path]}`` (``heatmaps[i]`` is ``None``
        where no PNG was written).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(paths)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != n:
        raise ValueError(f"write_prediction_outputs: scores must have length {n} (len(paths)), got {scores.shape[0]}")
    for arg, value in (("labels", labels), ("maps", maps), ("images", images)):
        if value is not None and len(value) != n:
            raise ValueError(f"write_prediction_outputs: {arg} must have length {n} (len(paths)), got {len(value)}")
    if labels is None and threshold is not None:
        labels = ~(scores <= float(threshold))  # a NaN score is never labelled good

    rows = []
    for i in range(n):
        label = "" if labels is None or labels[i] is None else int(bool(labels[i]))
        rows.append([str(paths[i]), _csv_float(scores[i]), label])
    csv_path = atomic_write_csv(["path", "score", "label"], rows, out / "predictions.csv")

    heatmaps: list[Optional[Path]] = [None] * n
    if maps is not None:
        vmin, vmax = _prediction_scale(maps, threshold)
        width = max(4, len(str(max(n - 1, 0))))
        for i in _progress(range(n), n, "heat maps", progress):
            amap = maps[i]
            if amap is None:
                continue
            img = None if images is None else images[i]
            if img is None:
                img = _load_rgb(paths[i])
            elif isinstance(img, Image.Image):
                img = np.asarray(img.convert("RGB"))
            elif isinstance(img, (str, os.PathLike)):
                img = _load_rgb(img)
            amap = np.asarray(amap, dtype=np.float32)
            if img is None:
                panel = colormap(amap, vmin, vmax)
            else:
                img = np.asarray(img)
                if img.dtype != np.uint8:  # float in [0, 1]
                    img = np.clip(np.rint(img.astype(np.float64) * 255), 0, 255).astype(np.uint8)
                panel = overlay(img, amap, vmin=vmin, vmax=vmax, alpha=alpha)
            stem = sanitize_name(Path(str(paths[i])).stem)
            heatmaps[i] = save_png(panel, out / "heatmaps" / f"{i:0{width}d}_{stem}.png")
    return {"dir": out, "csv": csv_path, "heatmaps": heatmaps}


def write_audit(model, data: CategoryData, out: Path, settings: dict, max_thumbnails: int = 200,
                labels: Optional[Sequence[Optional[str]]] = None) -> dict:
    """Write the audit report of a fitted detector's training images into ``out``.

    Args:
        model: A fitted :class:`~meds.method.model.MeDS` (``training_scores_``, ``selected_``).
        data: The split it was fitted on (``train`` in the same order); known noise
            labels, if any, are shown as "known defect".
        out: Output folder.
        settings: Shown as a table at the top of the page.
        max_thumbnails: Heat-map thumbnails for this many of the most suspicious images.
        labels: The per-image labels the fit used (``"defective"``, ``"good"``, ``None``):
            the page's marks on a first visit.

    Returns:
        The paths written (see :func:`write_audit_report`).
    """
    order = np.argsort(-model.training_scores_, kind="stable")
    paths = data.train_paths()
    shown = [paths[i] for i in order[:max_thumbnails]]
    maps = model.predict(shown).maps if shown else []
    truth = data.train_is_noise
    entries = []
    for rank, index in enumerate(order):
        entries.append(AuditEntry(
            rank=rank + 1,
            path=paths[index],
            score=float(model.training_scores_[index]),
            selected=bool(model.selected_[index]),
            image=read_image(paths[index]) if rank < len(shown) else None,
            anomaly_map=maps[rank] if rank < len(shown) else None,
            label=int(truth[index]) if truth is not None else None,
            mark=labels[index] if labels is not None else None,
        ))
    # Selection keeps eta below a cut, so the lowest untrusted score marks where it fell.
    untrusted = model.training_scores_[~model.selected_]
    cut = float(untrusted.min()) if untrusted.size else None
    return write_audit_report(entries, out, title=f"meds audit: {data.name}", threshold=model.threshold_,
                              cut=cut, settings=settings, max_thumbnails=max_thumbnails)
