"""The corrections UI of the audit page: its CSS and its one inline script.

The page stays a static file. Every entry is rendered by :mod:`meds.app.report` as HTML
(file names escaped there); the script only reads the page's own ``data-*`` attributes and
writes text with ``textContent``, so no file name ever passes through HTML parsing or a
string of code. It keeps each image's mark (``defective`` / ``good`` / unset) in
``localStorage`` under ``meds-audit:<report id>`` (a hash of the title and the file
names, so a reload, or a report of the same images, finds its marks again), shows the
running count, filters all / marked / unmarked, previews the original beside its heat map
on hover, focus or click, steps through the ranking from the keyboard, and downloads the
marks as ``labels.csv`` (``filename,label``, ranked order) for ``meds fit --labels``.
"""

REVIEW_CSS = """
.toolbar{position:sticky;top:0;z-index:2;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em .8em;
 margin-bottom:.8em;display:flex;flex-wrap:wrap;gap:.6em;align-items:center}
.toolbar button,.entry button{font:inherit;font-size:.85em;padding:.15em .6em;border:1px solid #999;border-radius:4px;
 background:#f4f4f4;cursor:pointer}
.toolbar button[aria-pressed=true]{background:#333;color:#fff}
#count{font-weight:600}
.keys{color:#555;font-size:.85em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:6px}
.entry{background:#fff;border:2px solid #ddd;border-radius:5px;padding:3px;font-size:.78em;outline:none}
.entry.untrusted{border-color:#e57373}
.entry:focus{box-shadow:0 0 0 3px #1e88e5}
.entry[data-mark=defective]{background:#f3d6f7;border-color:#6a1b9a}
.entry[data-mark=good]{background:#d7f0d8;border-color:#2e7d32}
.entry img{display:block;width:100%;height:auto;border-radius:3px}
.entry .orig{display:none}
.entry .meta{display:flex;justify-content:space-between;gap:.3em}
.entry .file{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.entry .marks{display:flex;gap:2px;margin-top:2px}
.entry .marks button{flex:1;padding:0 .2em}
.entry[data-mark=defective] button.defective,.entry[data-mark=good] button.good{background:#333;color:#fff}
.entry .score.above{font-weight:700;color:#b00020}
.cutline{grid-column:1/-1;background:#ffd54f;font-weight:700;text-align:center;padding:.3em;border:2px solid #e65100;
 border-radius:4px}
.placeholder{display:flex;align-items:center;justify-content:center;height:60px;color:#999}
#preview{position:fixed;right:1em;bottom:1em;z-index:3;background:#fff;border:1px solid #999;border-radius:6px;
 padding:.5em;box-shadow:0 2px 10px rgba(0,0,0,.25);max-width:46vw}
#preview[hidden]{display:none}
#preview .pair{display:flex;gap:.5em}
#preview img{max-width:22vw;height:auto}
#preview p{margin:.3em 0 0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
"""

REVIEW_JS = r"""
(function () {
  "use strict";
  var body = document.body;
  var storeKey = "meds-audit:" + body.getAttribute("data-report");
  var cards = Array.prototype.slice.call(document.querySelectorAll(".entry"));
  var filter = "all";

  function load() {
    try { var saved = JSON.parse(localStorage.getItem(storeKey)); } catch (e) { saved = null; }
    if (saved && typeof saved === "object") return saved;
    var given = {};  // first visit: the labels the fit used
    cards.forEach(function (c) { var g = c.getAttribute("data-given"); if (g) given[c.getAttribute("data-key")] = g; });
    return given;
  }
  var marks = load();

  function save() {
    try { localStorage.setItem(storeKey, JSON.stringify(marks)); } catch (e) { /* storage off: marks last this visit */ }
  }

  function show(card) {
    var key = card.getAttribute("data-key");
    var mark = Object.prototype.hasOwnProperty.call(marks, key) ? marks[key] : "";
    if (mark) card.setAttribute("data-mark", mark); else card.removeAttribute("data-mark");
    card.querySelectorAll(".marks button").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-set") === mark && mark !== ""));
    });
    card.hidden = (filter === "marked" && !mark) || (filter === "unmarked" && !!mark);
  }

  function count() {
    var d = 0, g = 0;
    cards.forEach(function (c) {
      var m = marks[c.getAttribute("data-key")];
      if (m === "defective") d++; else if (m === "good") g++;
    });
    document.getElementById("count").textContent =
      (d + g) + " of " + cards.length + " marked: " + d + " defective, " + g + " good";
  }

  function setMark(card, mark) {
    var key = card.getAttribute("data-key");
    if (mark) marks[key] = mark; else delete marks[key];
    save(); show(card); count();
  }

  function preview(card) {
    var box = document.getElementById("preview");
    var heat = card.querySelector("img.heat"), orig = card.querySelector("img.orig");
    if (!heat && !orig) { box.hidden = true; return; }
    var pi = document.getElementById("preview-orig"), ph = document.getElementById("preview-heat");
    pi.hidden = !orig; ph.hidden = !heat;
    if (orig) pi.src = orig.getAttribute("src");
    if (heat) ph.src = heat.getAttribute("src");
    document.getElementById("preview-name").textContent =
      "#" + card.getAttribute("data-rank") + "  " + card.querySelector(".file").textContent;
    box.hidden = false;
  }

  function visible() { return cards.filter(function (c) { return !c.hidden; }); }

  function step(card, by, list) {
    list = list || visible();
    var i = list.indexOf(card);
    var next = list[Math.min(list.length - 1, Math.max(0, (i < 0 ? -1 : i) + by))];
    if (next) { next.focus(); next.scrollIntoView({block: "nearest"}); preview(next); }
  }

  function setFilter(name) {
    filter = name;
    document.querySelectorAll("[data-filter]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-filter") === name));
    });
    document.querySelectorAll(".cutline").forEach(function (c) { c.hidden = name !== "all"; });
    cards.forEach(show);
  }

  function csvField(text) {
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function download() {
    var lines = ["filename,label"];
    cards.forEach(function (c) {
      var m = marks[c.getAttribute("data-key")];
      if (m === "defective" || m === "good") lines.push(csvField(c.getAttribute("data-key")) + "," + m);
    });
    var blob = new Blob([lines.join("\n") + "\n"], {type: "text/csv"});
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "labels.csv";
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
  }

  cards.forEach(function (card) {
    card.querySelectorAll(".marks button").forEach(function (b) {
      b.addEventListener("click", function (ev) { ev.stopPropagation(); setMark(card, b.getAttribute("data-set")); });
    });
    card.addEventListener("mouseenter", function () { preview(card); });
    card.addEventListener("focus", function () { preview(card); });
    card.addEventListener("click", function () { card.focus(); preview(card); });
    show(card);
  });
  document.querySelectorAll("[data-filter]").forEach(function (b) {
    b.addEventListener("click", function () { setFilter(b.getAttribute("data-filter")); });
  });
  document.getElementById("download").addEventListener("click", download);
  document.getElementById("clear").addEventListener("click", function () {
    if (window.confirm("Remove every mark of this report?")) { marks = {}; save(); cards.forEach(show); count(); }
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var card = document.activeElement && document.activeElement.classList.contains("entry") ? document.activeElement : null;
    var key = ev.key;
    if (key === "j" || key === "ArrowRight" || key === "ArrowDown") { step(card, 1); }
    else if (key === "k" || key === "ArrowLeft" || key === "ArrowUp") { step(card, -1); }
    else if (card && (key === "d" || key === "g" || key === "u")) {
      var before = visible();  // the card may leave the filtered view once marked
      setMark(card, key === "d" ? "defective" : key === "g" ? "good" : "");
      step(card, 1, before);
    } else if (key === "Escape") { document.getElementById("preview").hidden = true; }
    else return;
    ev.preventDefault();
  });
  setFilter("all");
  count();
  save();
})();
"""
