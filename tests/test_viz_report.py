"""Tests for meds.app.viz (colour maps, overlays, PNG output) and meds.app.report (audit report)."""

from __future__ import annotations

import csv
import dataclasses
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meds.app import viz
from meds.app.report import AuditEntry, sanitize_name, write_audit_report, write_prediction_outputs


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- colormap


def test_colormap_lut_endpoints_and_monotone_luminance():
    lut = viz.INFERNO_LUT
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0].astype(int).sum() < 30, "low end must be near black"
    assert lut[-1].min() > 150, "high end must be bright"
    lum = _luminance(lut)
    assert np.all(np.diff(lum) >= -0.5), "luminance must rise along the map"
    assert lum[-1] - lum[0] > 200


def test_colormap_scaling_clipping_and_nan():
    values = np.array([[0.0, 0.5, 1.0], [-3.0, 7.0, np.nan]])
    out = viz.colormap(values, vmin=0.0, vmax=1.0)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    lut = viz.INFERNO_LUT
    np.testing.assert_array_equal(out[0, 0], lut[0])
    np.testing.assert_array_equal(out[0, 2], lut[255])
    np.testing.assert_array_equal(out[0, 1], lut[128])  # round(0.5 * 255) = 128
    np.testing.assert_array_equal(out[1, 0], lut[0])  # clipped below
    np.testing.assert_array_equal(out[1, 1], lut[255])  # clipped above
    np.testing.assert_array_equal(out[1, 2], lut[0])  # NaN -> low
    # Defaults: the map's own finite range.
    ramp = np.linspace(2.0, 5.0, 11)[None, :]
    auto = viz.colormap(ramp)
    np.testing.assert_array_equal(auto[0, 0], lut[0])
    np.testing.assert_array_equal(auto[0, -1], lut[255])
    # Constant map: no division by zero.
    assert viz.colormap(np.full((4, 4), 3.0)).shape == (4, 4, 3)
    with pytest.raises(ValueError, match="vmin"):
        viz.colormap(values, vmin=2.0, vmax=1.0)


# ----------------------------------------------------------------------------- overlay


def test_overlay_shapes_dtype_and_blend_bounds():
    rng = _rng(1)
    img = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    amap = rng.random((6, 8)).astype(np.float32)
    out = viz.overlay(img, amap, alpha=0.4)
    assert out.shape == img.shape and out.dtype == np.uint8

    # alpha = 0 gives the image back; alpha = 1 gives the colourised resized map.
    np.testing.assert_array_equal(viz.overlay(img, amap, alpha=0.0), img)
    heat = viz.overlay(img, amap, alpha=1.0)
    assert not np.array_equal(heat, img)
    # Blend is a convex combination, channel by channel (±1 for rounding).
    lo = np.minimum(img, heat).astype(int) - 1
    hi = np.maximum(img, heat).astype(int) + 1
    assert np.all(out >= lo) and np.all(out <= hi)
    # Reference blend computed here: (1 - a) * image + a * heat.
    ref = np.rint(0.6 * img.astype(np.float64) + 0.4 * heat.astype(np.float64))
    assert np.abs(out.astype(np.float64) - ref).max() <= 1

    # Map at vmin everywhere -> darkest LUT colour blended in.
    flat = viz.overlay(img, np.zeros((3, 3)), vmin=0.0, vmax=1.0, alpha=0.5)
    ref_flat = np.rint(0.5 * img + 0.5 * viz.INFERNO_LUT[0].astype(np.float64))
    assert np.abs(flat.astype(np.float64) - ref_flat).max() <= 1

    # Bilinear resize: a left-to-right ramp stays a ramp (brightness increases to the right).
    ramp = np.tile(np.linspace(0, 1, 4, dtype=np.float32), (4, 1))
    hm = viz.overlay(np.zeros((32, 32, 3), np.uint8), ramp, alpha=1.0, vmin=0, vmax=1)
    row_lum = _luminance(hm[16])
    assert row_lum[-1] > row_lum[0] + 100
    assert np.all(np.diff(row_lum) >= -1.0)

    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(img, amap, alpha=1.5)
    with pytest.raises(TypeError, match="uint8"):
        viz.overlay(img.astype(np.float32), amap)
    with pytest.raises(ValueError, match="anomaly_map"):
        viz.overlay(img, np.zeros((2, 3, 4)))


def test_overlay_draws_mask_contour():
    img = np.full((64, 64, 3), 90, np.uint8)
    amap = np.zeros((8, 8), np.float32)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    plain = viz.overlay(img, amap, vmin=0, vmax=1)
    out = viz.overlay(img, amap, vmin=0, vmax=1, mask=mask)
    color = np.array(viz.CONTOUR_COLOR, np.uint8)
    # Reference contour: mask pixels with at least one 4-neighbour outside the mask.
    inner = np.zeros_like(mask)
    inner[21:39, 21:39] = True
    edge = mask & ~inner
    assert np.all(out[edge] == color)
    np.testing.assert_array_equal(out[~edge], plain[~edge])
    assert not np.any(np.all(plain == color, axis=-1)), "contour colour must contrast with the map"
    # A mask of another size (uint8 0/255) is resized, not rejected.
    small = (np.kron(mask[::4, ::4], np.ones((1, 1))) * 255).astype(np.uint8)
    out_small = viz.overlay(img, amap, vmin=0, vmax=1, mask=small)
    assert np.all(out_small[20, 20:40] == color)


# ----------------------------------------------------------------------------- png, thumbnails


def test_save_png_is_atomic_and_roundtrips(tmp_path, monkeypatch):
    arr = _rng(2).integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    target = tmp_path / "sub" / "a.png"
    viz.save_png(arr, target)
    assert sorted(os.listdir(target.parent)) == ["a.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(target)), arr)

    # A failing rename leaves neither a temp file nor a partial target.
    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        viz.save_png(arr, tmp_path / "sub" / "b.png")
    monkeypatch.undo()
    assert sorted(os.listdir(target.parent)) == ["a.png"]
    with pytest.raises(TypeError, match="uint8"):
        viz.save_png(arr.astype(np.float32), tmp_path / "c.png")


def test_thumbnail_keeps_aspect_ratio():
    img = np.zeros((300, 600, 3), np.uint8)
    t = viz.thumbnail(img, size=160)
    assert t.shape == (80, 160, 3) and t.dtype == np.uint8
    tall = viz.thumbnail(np.zeros((50, 25), np.uint8), size=100)
    assert tall.shape == (100, 50, 3)


def test_side_by_side_layout_and_labels():
    a = np.full((40, 30, 3), 255, np.uint8)
    b = np.full((20, 20, 3), 128, np.uint8)  # resized to height 40 -> width 40
    strip = viz.side_by_side([a, b], ["image", "heat"], gap=4)
    assert strip.dtype == np.uint8 and strip.ndim == 3
    assert strip.shape[1] == 30 + 40 + 3 * 4
    assert strip.shape[0] > 40 + 2 * 4  # caption band on top
    no_labels = viz.side_by_side([a, b], None, gap=4)
    assert no_labels.shape == (48, 82, 3)
    # Caption band holds text pixels (light on the dark background); the unlabelled strip has none.
    band = strip[: strip.shape[0] - 44].astype(int)
    assert (band.min(axis=-1) > 128).sum() >= 10
    assert np.all(no_labels[:4] == 32)
    with pytest.raises(ValueError, match="labels"):
        viz.side_by_side([a, b], ["only one"])


# ----------------------------------------------------------------------------- audit report


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.rows: list[dict] = []  # in document order: {"kind": "entry"|"cut", ...}
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        d = dict(attrs)
        for key in ("src", "href"):
            if d.get(key) is not None:
                self.refs.append(d[key])
        if tag == "div":
            classes = (d.get("class") or "").split()
            if "entry" in classes:
                self.rows.append({"kind": "entry", "score": float(d["data-score"]), "rank": int(d["data-rank"])})
            elif "cut" in classes:
                self.rows.append({"kind": "cut"})
        if tag == "div" and d.get("class") == "file" and self.rows:
            self.rows[-1]["title"] = d.get("title")


def _entries(n: int = 12, seed: int = 3) -> list[AuditEntry]:
    rng = _rng(seed)
    scores = rng.permutation(np.linspace(0.1, 1.2, n))
    out = []
    for i, s in enumerate(scores):
        out.append(
            AuditEntry(
                rank=None,
                path=f"/data/cat/train/good/{i:03d}.png",
                score=float(s),
                selected=bool(s < 0.7),
                image=rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8),
                anomaly_map=rng.random((4, 6)).astype(np.float32) * s,
                label=int(s > 0.9) if i % 2 == 0 else None,
            )
        )
    return out


def test_audit_report_html_csv_and_cut(tmp_path):
    entries = _entries()
    evil = '/data/x/<script>alert("x")</script>&"q\'.png'
    entries[0] = AuditEntry(rank=None, path=evil, score=5.0, selected=False, image=None, anomaly_map=None)
    res = write_audit_report(
        entries, tmp_path, title="audit <b>", threshold=0.8, cut=0.7,
        settings={"category": "bottle", "noise": {"ratio": 0.1, "overlap": False}, "k": 3},
    )
    html_text = Path(res["html"]).read_text(encoding="utf-8")
    assert html_text.lower().count("<script") == 1  # the page's own (meds.app.review)
    assert "&lt;script&gt;" in html_text
    assert "<b>" not in html_text

    parser = _Collector()
    parser.feed(html_text)
    parser.close()
    # Every reference is a relative file that exists; no external URLs.
    assert parser.refs, "expected thumbnail references"
    for ref in parser.refs:
        assert "://" not in ref and not ref.startswith("//") and not ref.startswith("/")
        assert (tmp_path / ref).is_file(), ref
    assert "http://" not in html_text and "https://" not in html_text
    assert parser.tags.count("script") == 1
    # Ranked by score, most suspicious first; ranks assigned 1..n.
    entry_rows = [r for r in parser.rows if r["kind"] == "entry"]
    scores = [r["score"] for r in entry_rows]
    assert scores == sorted((e.score for e in entries), reverse=True)
    assert [r["rank"] for r in entry_rows] == list(range(1, len(entries) + 1))
    assert entry_rows[0]["title"] == evil  # full path in the title attribute, unescaped by the parser
    # Exactly one cut marker, between score >= 0.7 and score < 0.7.
    kinds = [r["kind"] for r in parser.rows]
    assert kinds.count("cut") == 1
    i = kinds.index("cut")
    assert parser.rows[i - 1]["score"] >= 0.7 > parser.rows[i + 1]["score"]
    assert "known defect" in html_text

    # CSV round-trips with the csv module.
    with open(res["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == ["rank", "path", "score", "selected", "label"]
    assert rows[0]["path"] == evil
    assert [float(r["score"]) for r in rows] == scores
    by_path = {e.path: e for e in entries}
    for r in rows:
        e = by_path[r["path"]]
        assert float(r["score"]) == e.score
        assert r["selected"] == ("true" if e.selected else "false")
        assert r["label"] == ("" if e.label is None else str(e.label))
    # The originals shown beside the heat maps; the initial marks the fit used.
    assert sorted(p.name for p in res["originals"]) == sorted(p.name for p in res["thumbs"])
    assert 'data-given="' not in html_text
    marked = [dataclasses.replace(e, mark="defective" if i == 1 else None) for i, e in enumerate(entries)]
    again = Path(write_audit_report(marked, tmp_path / "marked")["html"]).read_text(encoding="utf-8")
    assert again.count('data-given="defective"') == 1
    # One thumbnail per entry that has an image; none left as temp files.
    thumbs = sorted(p.name for p in (tmp_path / "thumbs").iterdir())
    assert len(thumbs) == len(entries) - 1 and all(t.endswith(".png") and not t.startswith(".") for t in thumbs)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_audit_report_cut_from_selection_and_limits(tmp_path):
    entries = [
        AuditEntry(rank=None, path="a.png", score=0.9, selected=False),
        AuditEntry(rank=None, path="b.png", score=0.8, selected=False),
        AuditEntry(rank=None, path="c.png", score=0.5, selected=True),
        AuditEntry(rank=None, path="d.png", score=0.1, selected=True),
    ]
    res = write_audit_report(list(reversed(entries)), tmp_path, thumbnails=True, max_thumbnails=1)
    parser = _Collector()
    parser.feed(Path(res["html"]).read_text(encoding="utf-8"))
    kinds = [r["kind"] for r in parser.rows]
    assert kinds == ["entry", "entry", "cut", "entry", "entry"]
    assert res["thumbs"] == []  # no images or maps given
    # All trusted and no cut: no marker.
    res2 = write_audit_report([AuditEntry(None, "z.png", 0.2, True)], tmp_path / "b")
    p2 = _Collector()
    p2.feed(Path(res2["html"]).read_text(encoding="utf-8"))
    assert [r["kind"] for r in p2.rows] == ["entry"]
    # max_thumbnails limits the thumbnails to the top entries.
    res3 = write_audit_report(_entries(6), tmp_path / "c", max_thumbnails=2)
    assert [p.name for p in res3["thumbs"]] == ["0001.png", "0002.png"]


# ----------------------------------------------------------------------------- predictions


def test_prediction_outputs_one_png_per_image(tmp_path):
    rng = _rng(4)
    n = 3
    paths = [str(tmp_path / "in" / name) for name in ("a b.png", "ünï<c>.jpg", "x.y.png")]
    (tmp_path / "in").mkdir()
    images = [rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8) for i in range(n)]
    Image.fromarray(images[2]).save(paths[2])
    maps = [rng.random((5, 5)).astype(np.float32) for _ in range(n)]
    scores = np.array([0.2, 0.9, 0.5])
    res = write_prediction_outputs(paths, scores, None, maps, [images[0], images[1], None], tmp_path / "out", 0.45)
    heat = sorted((tmp_path / "out" / "heatmaps").iterdir())
    assert len(heat) == n
    for p in heat:
        assert p.suffix == ".png"
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in p.name), p.name
    assert [h.name.split("_")[0] for h in heat] == ["0000", "0001", "0002"]
    for i, hp in enumerate(res["heatmaps"]):
        arr = np.asarray(Image.open(hp))
        assert arr.shape == images[i].shape
    with open(res["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == paths
    np.testing.assert_array_equal([float(r["score"]) for r in rows], scores)
    assert [r["label"] for r in rows] == ["0", "1", "1"]
    assert sanitize_name("a/b<c>d e") == "a_b_c_d_e"
    with pytest.raises(ValueError, match="scores"):
        write_prediction_outputs(paths, scores[:2], None, None, None, tmp_path / "o2")
