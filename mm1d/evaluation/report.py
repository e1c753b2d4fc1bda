"""The results.json layout every eval script writes, media helpers, and the offline HTML report.

``DIR/results.json`` (``format = "mm1d-eval-results"``, ``version = 1``)::

    {
      "format": "mm1d-eval-results", "version": 1,
      "kind": "reconstruction-image",          # what was measured (free text, e.g. "t2i-shapes")
      "title": "FlexTok tiny, val",            # shown in the report
      "created": "2025-01-01T12:00:00+00:00",
      "settings": {...},                       # everything needed to rerun: paths, budgets, seeds, CFG, ...
      "budget_name": "k",                      # what the budget axis counts
      "budgets": [1, 2, 4],
      "metrics": {"1": {"psnr": 17.2, "ssim": 0.61, ...}, "2": {...}},   # per budget, numbers or null
      "metrics_std": {"1": {"psnr": 0.1}},     # optional: spread over seeds, same keys
      "summary": {"num_images": 64},           # optional: numbers not tied to a budget
      "series": {"codebook_usage": {"x": [1, 2, ...], "y": [0.9, ...]},   # optional: curves to plot
                 "psnr_per_frame": {"x": [0, 1, ...], "y": {"1": [...], "32": [...]}}},
      "samples": {"1": ["samples/k1.png"], "2": ["samples/k2.gif"]},   # optional, relative to DIR
      "media": ["quality_vs_k.png"]            # optional: other images to show, relative to DIR
    }

Metric values that are not finite (an identical pair's PSNR) are stored as null. Budget keys are strings
(JSON object keys); ``budgets`` keeps them as integers in order.

:func:`render_report` turns one or more results folders into ONE self-contained HTML page: every image
and GIF is embedded as a base64 data URI and plots are drawn with matplotlib's Agg canvas (no pyplot
state, no display), so the file opens offline anywhere. A small script in the page counts the images
that decoded (``#image-status``), which lets a headless browser check the page.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_FORMAT = "mm1d-eval-results"
RESULTS_VERSION = 1
RESULTS_FILE = "results.json"
_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".webp": "image/webp"}


# ---- results.json -------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON-safe copy: tensors/numpy scalars to Python numbers, non-finite floats to None, paths to str."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar
        return _clean(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def make_results(kind: str, settings: Mapping[str, Any], budgets: Sequence[int],
                 metrics: Mapping[int, Mapping[str, float | None]], *, title: str | None = None,
                 budget_name: str = "k", metrics_std: Mapping[int, Mapping[str, float | None]] | None = None,
                 summary: Mapping[str, Any] | None = None, series: Mapping[str, Any] | None = None,
                 samples: Mapping[int, Sequence[str]] | None = None, media: Sequence[str] | None = None) -> dict:
    """Build a results dict in the layout above (validated)."""
    results = {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION, "kind": kind, "title": title or kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": _clean(dict(settings)), "budget_name": budget_name, "budgets": [int(b) for b in budgets],
        "metrics": _clean({str(k): dict(v) for k, v in metrics.items()}),
        "metrics_std": _clean({str(k): dict(v) for k, v in (metrics_std or {}).items()}),
        "summary": _clean(dict(summary or {})), "series": _clean(dict(series or {})),
        "samples": _clean({str(k): list(v) for k, v in (samples or {}).items()}), "media": list(media or []),
    }
    validate_results(results)
    return results


def validate_results(results: Mapping[str, Any], where: str = "results") -> None:
    """Raise ValueError naming the first problem with a results dict."""
    if results.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{where}: 'format' must be {RESULTS_FORMAT!r}, got {results.get('format')!r}")
    for key, typ in (("kind", str), ("settings", dict), ("budgets", list), ("metrics", dict)):
        if not isinstance(results.get(key), typ):
            raise ValueError(f"{where}: '{key}' must be a {typ.__name__}")
    for b, row in results["metrics"].items():
        if not isinstance(row, dict):
            raise ValueError(f"{where}: metrics[{b!r}] must be a dict of numbers")
        for name, v in row.items():
            if v is not None and not isinstance(v, (int, float)):
                raise ValueError(f"{where}: metrics[{b!r}][{name!r}] must be a number or null, got {v!r}")


def write_results(out_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Validate and write ``out_dir/results.json`` atomically; returns its path."""
    from mm1d.utils import atomic_write_text

    validate_results(results)
    path = Path(out_dir) / RESULTS_FILE
    atomic_write_text(path, json.dumps(_clean(results), indent=2, allow_nan=False) + "\n")
    return path


def read_results(path: str | Path) -> dict:
    """Read ``results.json`` (or a folder holding one); raises FileNotFoundError/ValueError with the path."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS_FILE} at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    validate_results(data, str(path))
    return data


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Result folders among ``paths``: each one holding results.json, or else every folder below it that does."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == RESULTS_FILE:
            runs.append(p.parent)
        elif (p / RESULTS_FILE).is_file():
            runs.append(p)
        elif p.is_dir():
            found = sorted(f.parent for f in p.rglob(RESULTS_FILE))
            if not found:
                raise FileNotFoundError(f"no {RESULTS_FILE} under {p}")
            runs.extend(found)
        else:
            raise FileNotFoundError(f"run folder not found: {p}")
    return runs


# ---- media ----------------------------------------------------------------------------------------------
def save_image_grid(rows: Sequence[torch.Tensor], path: str | Path, pad: int = 1) -> Path:
    """Save rows of images as one PNG grid (row r = ``rows[r]``).

    Args:
        rows: tensors ``(N, 3, H, W)`` float in [-1, 1] (or uint8), all of the same shape.
        path: output ``.png`` (written atomically).
    """
    from PIL import Image

    from mm1d.tokenization.video_io import video_grid
    from mm1d.utils import atomic_path

    if not rows:
        raise ValueError("no rows to draw")
    stacked = torch.cat([r.cpu() for r in rows]).unsqueeze(2)  # (R*N, 3, 1, H, W)
    grid = video_grid(stacked, nrow=rows[0].shape[0], pad=pad)[:, 0]  # (3, H', W') uint8
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return Path(path)


def save_video_grid(rows: Sequence[torch.Tensor], path: str | Path, fps: float = 8.0, pad: int = 1) -> Path:
    """Save rows of videos ``(N, 3, F, H, W)`` (float in [-1, 1] or uint8) as one GIF or mp4 grid."""
    from mm1d.tokenization.video_io import video_grid, write_video

    if not rows:
        raise ValueError("no rows to draw")
    grid = video_grid(torch.cat([r.cpu() for r in rows]), nrow=rows[0].shape[0], pad=pad)  # (3, F, H', W')
    return write_video(grid, path, fps=fps)


def _figure(width: float = 4.2, height: float = 3.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig: Any, tight: bool = True) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight" if tight else None)
    return buf.getvalue()


def metric_names(runs: Sequence[Mapping[str, Any]], with_values: bool = False) -> list[str]:
    """Every per-budget metric name of the runs, in first-seen order (``with_values``: only non-null ones)."""
    names: list[str] = []
    for r in runs:
        for b in r["budgets"]:
            for name, v in r["metrics"].get(str(b), {}).items():
                if name not in names and (v is not None or not with_values):
                    names.append(name)
    return names


PERTURBED_PREFIX = "robust/"  # metrics of reconstructions from perturbed tokens share their base metric's panel


def plot_budget_curves(runs: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None,
                       labels: Sequence[str] | None = None, columns: int = 3) -> bytes:
    """PNG bytes: one panel per metric, quality against budget (log2 axis), one colour per run.

    A metric ``robust/X`` is drawn dashed in the panel of ``X`` when both exist; the spread over seeds
    (``metrics_std``) is shaded.
    """
    every = metric_names(runs, with_values=True)
    if names is None:
        names = [n for n in every if not (n.startswith(PERTURBED_PREFIX) and n[len(PERTURBED_PREFIX):] in every)]
    names = list(names)
    if not names:
        raise ValueError("no per-budget metrics to plot")
    labels = list(labels) if labels is not None else [str(r.get("title", i)) for i, r in enumerate(runs)]
    cols = min(columns, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(4.0 * cols, 3.0 * rows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        dashed = PERTURBED_PREFIX + name
        for r, (run, label) in enumerate(zip(runs, labels)):
            for metric, style, tag in ((name, "-", label), (dashed, "--", f"{label}, perturbed tokens")):
                if metric == dashed and (dashed in names or dashed not in every):
                    continue
                pts = [(b, run["metrics"].get(str(b), {}).get(metric)) for b in run["budgets"]]
                pts = [(b, v) for b, v in pts if v is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, marker="o", color=f"C{r % 10}", label=tag, markersize=4)
                std = [run.get("metrics_std", {}).get(str(b), {}).get(metric) for b in xs]
                if all(s is not None for s in std):
                    ax.fill_between(xs, [y - s for y, s in zip(ys, std)], [y + s for y, s in zip(ys, std)],
                                    color=f"C{r % 10}", alpha=0.2)
        ax.set_xscale("log", base=2)
        budgets = sorted({b for run in runs for b in run["budgets"]})
        ax.set_xticks(budgets, [str(b) for b in budgets])  # fixed ticks: matplotlib's log locator is slow
        ax.minorticks_off()
        ax.set_title(name + (" (dashed: perturbed tokens)" if dashed in every and dashed not in names else ""),
                     fontsize=9)
        ax.set_xlabel(str(runs[0].get("budget_name", "k")), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0 and (len(runs) > 1 or dashed in every):
            ax.legend(fontsize=6)
    # fixed margins: tight_layout measures every tick label of every panel, which took seconds per plot
    fig.subplots_adjust(left=0.6 / (4.0 * cols), right=1 - 0.15 / (4.0 * cols), bottom=0.5 / (3.0 * rows),
                        top=1 - 0.35 / (3.0 * rows), wspace=0.25, hspace=0.45)
    return _png_bytes(fig, tight=False)


def save_budget_plot(results: Mapping[str, Any] | Sequence[Mapping[str, Any]], path: str | Path,
                     names: Sequence[str] | None = None) -> Path:
    """Write the quality-vs-budget PNG of one results dict (or several, one line each) atomically."""
    from mm1d.utils import atomic_path

    runs = [results] if isinstance(results, Mapping) else list(results)
    data = plot_budget_curves(runs, names)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def plot_series(name: str, series: Mapping[str, Any]) -> bytes:
    """PNG bytes of one series: ``{"x": [...], "y": [...]}`` or ``{"x": [...], "y": {label: [...]}}``."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ys = series.get("y", [])
    curves = ys.items() if isinstance(ys, Mapping) else [(None, ys)]
    for label, y in curves:
        xs = series.get("x") or list(range(len(y)))
        ax.plot(xs[: len(y)], [math.nan if v is None else v for v in y], marker=".",
                label=None if label is None else f"{series.get('label', 'k')}={label}")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(str(series.get("xlabel", "")), fontsize=8)
    ax.grid(alpha=0.3)
    if isinstance(ys, Mapping) and ys:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png_bytes(fig)


# ---- HTML -----------------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.key { text-align: left; font-family: monospace; }
figure { display: inline-block; margin: .4em; vertical-align: top; text-align: center; }
figcaption { font-size: .8em; color: #555; } img.pixel { image-rendering: pixelated; }
.missing { color: #b00; } div.wide { overflow-x: auto; } #image-status { color: #666; font-size: .8em; }
"""
_STATUS_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  var s = document.getElementById('image-status');
  s.setAttribute('data-loaded', ok); s.setAttribute('data-total', imgs.length);
  s.textContent = ok + ' of ' + imgs.length + ' images shown';
});
"""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, mime: str, caption: str, width: int | None = None, pixel: bool = False) -> str:
    style = f' style="width:{width}px"' if width else ""
    cls = ' class="pixel"' if pixel else ""
    return (f'<figure><img{cls} src="{_data_uri(data, mime)}" alt="{html.escape(caption)}"{style}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _file_img(run_dir: Path, rel: str, caption: str) -> str:
    path = (run_dir / rel).resolve()
    mime = _MIME.get(path.suffix.lower())
    if mime is None or not path.is_file():
        why = "missing" if mime is not None else "not an image"
        return f'<p class="missing">{why}: {html.escape(str(run_dir / rel))}</p>'
    from PIL import Image

    with Image.open(path) as im:
        w = im.size[0]
    width = max(w, min(4 * w, 900)) if w < 300 else None  # upscale tiny grids, crisply
    return _img(path.read_bytes(), mime, caption, width=width, pixel=width is not None)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, json.dumps(v) if isinstance(v, (list, dict)) else v))
    return out


def _kv_table(d: Mapping[str, Any]) -> str:
    rows = "".join(f'<tr><td class="key">{html.escape(k)}</td><td class="key">{_fmt(v)}</td></tr>'
                   for k, v in _flatten(d))
    return f"<table>{rows}</table>" if rows else ""


def _metrics_table(run: Mapping[str, Any]) -> str:
    names = metric_names([run])
    if not names:
        return ""
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = []
    for b in run["budgets"]:
        row, std = run["metrics"].get(str(b), {}), run.get("metrics_std", {}).get(str(b), {})
        cells = "".join(f"<td>{_fmt(row.get(n))}"
                        + (f" ± {_fmt(std[n])}" if std.get(n) is not None and row.get(n) is not None else "")
                        + "</td>" for n in names)
        body.append(f"<tr><th>{b}</th>{cells}</tr>")
    return (f"<div class='wide'><table><tr><th>{html.escape(run.get('budget_name', 'k'))}</th>{head}</tr>"
            f"{''.join(body)}</table></div>")


def _run_section(run_dir: Path, run: Mapping[str, Any], index: int) -> str:
    parts = [f'<h2 id="run-{index}">{html.escape(str(run.get("title", run["kind"])))}</h2>',
             f"<p>kind <b>{html.escape(run['kind'])}</b> · {html.escape(str(run_dir))} · "
             f"{html.escape(str(run.get('created', '')))}</p>",
             "<h3>Metrics by budget</h3>", _metrics_table(run)]
    if run.get("summary"):
        parts += ["<h3>Summary</h3>", _kv_table(run["summary"])]
    if metric_names([run], with_values=True):
        parts.append(_img(plot_budget_curves([run]), "image/png", "quality against budget"))
    for name, series in run.get("series", {}).items():
        parts.append(_img(plot_series(name, series), "image/png", name))
    if run.get("samples"):
        parts.append("<h3>Samples</h3>")
        for b in run["budgets"]:
            for rel in run["samples"].get(str(b), []):
                parts.append(_file_img(run_dir, rel, f"{run.get('budget_name', 'k')} = {b}"))
        for key, rels in run["samples"].items():  # samples not tied to a listed budget
            if key not in {str(b) for b in run["budgets"]}:
                parts.extend(_file_img(run_dir, rel, key) for rel in rels)
    if run.get("media"):
        parts.append("<h3>Figures</h3>")
        parts.extend(_file_img(run_dir, rel, rel) for rel in run["media"])
    parts += ["<details><summary>Settings</summary>", _kv_table(run["settings"]), "</details>"]
    return "\n".join(parts)


def render_report(run_dirs: Sequence[str | Path], title: str = "mm1d evaluation report") -> str:
    """One self-contained HTML page for the given result folders (see the module docstring)."""
    dirs = find_runs(run_dirs)
    runs = [read_results(d) for d in dirs]
    toc = "".join(f'<li><a href="#run-{i}">{html.escape(str(r.get("title", r["kind"])))}</a> '
                  f'({html.escape(r["kind"])})</li>' for i, r in enumerate(runs))
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p id="image-status">images not checked yet</p><ul>{toc}</ul>']
    if len(runs) > 1 and metric_names(runs, with_values=True):
        labels = [f"{r.get('title', r['kind'])} [{i}]" for i, r in enumerate(runs)]
        parts += ["<h2>All runs</h2>", _img(plot_budget_curves(runs, labels=labels), "image/png",
                                            "quality against budget, all runs")]
    parts += [_run_section(d, r, i) for i, (d, r) in enumerate(zip(dirs, runs))]
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style><script>{_STATUS_JS}</script></head>\n<body>\n" + "\n".join(parts)
            + f"\n<p style='color:#888;font-size:.8em'>generated {created} by mm1d</p>\n</body></html>\n")


def write_report(run_dirs: Sequence[str | Path], out: str | Path, title: str = "mm1d evaluation report") -> Path:
    """Render :func:`render_report` to ``out`` atomically; returns the path."""
    from mm1d.utils import atomic_write_text

    atomic_write_text(out, render_report(run_dirs, title))
    return Path(out)
