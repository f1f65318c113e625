"""Evaluation report: Markdown or HTML (chosen by the file extension) with its PNG figures in a folder beside it,
`<stem>_files/` (so that a report written into the current directory adds one folder there, not a dozen files).

Contents: the summary statistics, a box plot per metric (one box per source and modality), a picture of the
best and the worst scored case (middle axial slice: reference, synthesised, absolute difference, on the
[0, 1] percentile scale), the per-case table, and the errors, warnings and missing predictions.
Figures are drawn with matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from infer.evaluate.scoring import (
    CONSOLE_IMAGE_METRICS,
    METRIC_COLUMNS,
    PREDICTION,
    SEG_COLUMNS,
    SEGMENTATION,
    EvaluationResult,
    _fmt,
    _source_order,
)

RANK_METRIC = "ssim_brain"
"""Metric that picks the best and worst case (brain-only SSIM: the challenge SSIM barely varies)."""

_Block = tuple[str, object]


def markdown_table(head: Sequence[object], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table (cells as text, "|" escaped)."""
    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(head), "|" + " --- |" * len(head), *(line(r) for r in rows)]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def box_plot(rows: Sequence[Mapping], metric: str, path: Path) -> Path | None:
    """Box plot of one metric, one box per (source, modality) over the ``ok`` rows; None if nothing is finite."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        v = float(r.get(metric, math.nan))
        if math.isfinite(v):
            groups.setdefault((r["source"], r["modality"]), []).append(v)
    if not groups:
        return None
    keys = sorted(groups, key=lambda k: (_source_order(k[0]), k[1]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(keys) + 1.5), 3.6))
    ax.boxplot([groups[k] for k in keys], showmeans=True)
    ax.set_xticks(range(1, len(keys) + 1))
    ax.set_xticklabels([f"{s}\n{m}" for s, m in keys], fontsize=7, rotation=0)
    ax.set_title(metric)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def best_worst_rows(rows: Sequence[Mapping], metric: str = RANK_METRIC) -> list[tuple[str, Mapping]]:
    """``[("best", row), ("worst", row)]`` by `metric` among scored predictions (baselines if there are none)."""
    scored = [r for r in rows if r["status"] == "ok" and r["source"] != SEGMENTATION
              and math.isfinite(float(r.get(metric, math.nan)))]
    preds = [r for r in scored if r["source"] == PREDICTION]
    pool = preds or scored
    if not pool:
        return []
    best = max(pool, key=lambda r: float(r[metric]))
    worst = min(pool, key=lambda r: float(r[metric]))
    return [("best", best)] if best is worst else [("best", best), ("worst", worst)]


def best_worst_picture(
    picks: Sequence[tuple[str, Mapping]],
    load_slices: Callable[[Mapping], tuple[np.ndarray, np.ndarray]],
    path: Path,
    metric: str = RANK_METRIC,
) -> Path | None:
    """Reference | synthesised | |difference| of the middle axial slice of each picked row."""
    if not picks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(picks), 3, figsize=(9, 3.2 * len(picks)), squeeze=False)
    for (label, row), ax_row in zip(picks, axes):
        ref, pred = load_slices(row)
        # Radiological display: array axis 0 (i) across, axis 1 (j) up.
        for ax, img, title, kw in (
            (ax_row[0], ref, "reference", {"cmap": "gray", "vmin": 0, "vmax": 1}),
            (ax_row[1], pred, f"{row['source']}", {"cmap": "gray", "vmin": 0, "vmax": 1}),
            (ax_row[2], np.abs(pred - ref), "|difference|", {"cmap": "magma", "vmin": 0, "vmax": 0.5}),
        ):
            ax.imshow(np.rot90(img), **kw)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        ax_row[0].set_title(f"{label}: {row['case']} {row['modality']} ({metric} {_fmt(float(row[metric]), 3)})\n"
                            "reference", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _blocks(result: EvaluationResult, summary: Sequence[Mapping], figures: Sequence[tuple[str, Path]],
            picture: Path | None, picture_note: str) -> list[_Block]:
    b: list[_Block] = [("h1", "Synthesis evaluation")]
    ok = result.ok_rows
    preds = result.predictions
    where = "none" if preds is None else ("in memory" if isinstance(preds, Mapping) else str(preds))
    b.append(("p", f"Reference: {result.reference_dir}. Predictions: {where}. "
              f"{len({r['case'] for r in result.rows})} case(s), {len(ok)} scored row(s), "
              f"{len(result.missing)} missing, {len(result.errors)} error(s)."))
    b.append(("p", "Challenge SSIM (ssim_healthy, ssim_tumour) is the BraSyn scoring: whole-volume 3D SSIM of masked "
              "volumes, dominated by background. Brain-only SSIM (ssim_brain*) averages the SSIM map over brain "
              "voxels or a region. PSNR/MAE/MSE are over the brain on the [0, 1] percentile scale."))
    b.append(("h2", "Summary"))
    head = ["group", "source", "modality", "metric", "n", "mean", "std", "median"]
    b.append(("table", (head, [[s["group"], s["source"], s["modality"], s["metric"], str(s["n"]), _fmt(s["mean"]),
                                 _fmt(s["std"]), _fmt(s["median"])] for s in summary])))
    if figures:
        b.append(("h2", "Distributions"))
        for metric, p in figures:
            b.append(("img", (metric, f"{p.parent.name}/{p.name}")))
    b.append(("h2", "Best and worst case"))
    if picture is not None:
        b.append(("p", picture_note))
        b.append(("img", ("best and worst case", f"{picture.parent.name}/{picture.name}")))
    else:
        b.append(("p", picture_note or "No scored case to show."))
    if result.errors or result.warnings or result.missing:
        b.append(("h2", "Problems"))
        items = [f"error: {e}" for e in result.errors] + [f"warning: {w}" for w in result.warnings]
        items += [f"missing: {r['case']} {r['source']}: {r['detail']}" for r in result.missing]
        b.append(("list", items))
    b.append(("h2", "Per case"))
    cols = [c for c in (*CONSOLE_IMAGE_METRICS, "mse", *SEG_COLUMNS)
            if any(math.isfinite(float(r.get(c, math.nan))) or math.isinf(float(r.get(c, math.nan))) for r in ok)]
    rows = [[r["case"], r["source"], r["modality"], r["status"], *[_fmt(float(r.get(c, math.nan))) for c in cols]]
            for r in result.rows]
    b.append(("table", (["case", "source", "modality", "status", *cols], rows)))
    return b


def _render_md(blocks: Sequence[_Block]) -> str:
    out = []
    for kind, content in blocks:
        if kind == "h1":
            out.append(f"# {content}\n")
        elif kind == "h2":
            out.append(f"## {content}\n")
        elif kind == "p":
            out.append(f"{content}\n")
        elif kind == "list":
            out.extend(f"- {x}" for x in content)  # type: ignore[union-attr]
            out.append("")
        elif kind == "img":
            alt, src = content  # type: ignore[misc]
            out.append(f"![{alt}]({src})\n")
        elif kind == "table":
            head, rows = content  # type: ignore[misc]
            out.extend(markdown_table(head, rows))
            out.append("")
    return "\n".join(out)


def _render_html(blocks: Sequence[_Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>Synthesis evaluation</title>",
           "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
           "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
           "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>"]
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(str(content))}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(str(content))}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in content) + "</ul>")  # type: ignore[union-attr]
        elif kind == "img":
            alt, src = content  # type: ignore[misc]
            out.append(f"<img alt='{e(alt)}' src='{e(src)}'>")
        elif kind == "table":
            head, rows = content  # type: ignore[misc]
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    result: EvaluationResult,
    path: str | Path,
    summary: Sequence[Mapping] | None = None,
    load_slices: Callable[[Mapping], tuple[np.ndarray, np.ndarray]] | None = None,
    rank_metric: str = RANK_METRIC,
) -> Path:
    """Write the report (``.md`` or ``.html``) and its PNGs (``<stem>_files/<metric>.png``, ``best_worst.png``).

    load_slices(row) -> (reference slice, synthesised slice) in [0, 1]; default `EvaluationResult.middle_slices`.
    """
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in (".md", ".html", ".htm"):
        raise ValueError(f"report must be .md or .html: {path}")
    figure_dir = path.parent / f"{path.stem}_files"
    figure_dir.mkdir(parents=True, exist_ok=True)
    summary = result.summary() if summary is None else summary
    figures = []
    for metric in METRIC_COLUMNS:
        p = box_plot(result.rows, metric, figure_dir / f"{metric}.png")
        if p is not None:
            figures.append((metric, p))
    picks = best_worst_rows(result.rows, rank_metric)
    picture, note = None, ""
    if picks:
        try:
            picture = best_worst_picture(picks, load_slices or result.middle_slices,
                                         figure_dir / "best_worst.png", rank_metric)
            note = "; ".join(f"{label}: {r['case']} {r['source']} {r['modality']} ({rank_metric} "
                             f"{_fmt(float(r[rank_metric]))})" for label, r in picks) + ". Middle axial slice."
        except Exception as exc:  # noqa: BLE001 - a picture must not lose the rest of the report
            note = f"picture not drawn: {type(exc).__name__}: {exc}"
    blocks = _blocks(result, summary, figures, picture, note)
    path.write_text(_render_md(blocks) if fmt == ".md" else _render_html(blocks), encoding="utf-8")
    return path
