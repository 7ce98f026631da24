"""Aggregation over images and the written report: results.json, results.md, terminal tables.

Statistics (decision): ``mean`` and the *population* standard deviation (``ddof=0``)
over the images that have a value, so one image gives ``std = 0`` rather than an
undefined sample deviation. Each summary also carries ``n``, the number of images
averaged (values that could not be computed are ``null`` per image and left out).

Tables follow the paper's layout: methods as columns, metrics as rows, cells
"mean ± std" to three decimals, the best mean of each row in bold (``*`` in the
terminal), judged on the displayed (rounded) value so that ties are all bold. Errors
(RMSE, MAE, MEE, EPE) are better low; success rates, registration PSNR / SSIM and every
fusion metric are better high. A success rate's cell is the count and share of pairs,
``"6/8 (75.0%)"`` (its mean is the share; a standard deviation says nothing more).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rfnet_tf.evaluation.methods import (
    LOWER_IS_BETTER,
    REGISTRY,
    SUCCESS_METRICS,
    SUCCESS_THRESHOLDS_PX,
)
from rfnet_tf.staging import write_atomically

PRECISION = 3
MISSING_CELL = "n/a"
# Column headings: each method's label (rfnet_tf.evaluation.methods.REGISTRY).
METHOD_LABELS = {name: method.label for name, method in REGISTRY.items()}
# The rows of the per-category registration table.
CATEGORY_METRICS = ("rmse", *SUCCESS_METRICS)
METRIC_LABELS = {
    "rmse": "RMSE (px)",
    "mae": "MAE (px)",
    "mee": "MEE (px)",
    **{
        metric: f"pairs < {threshold} px"
        for metric, threshold in zip(SUCCESS_METRICS, SUCCESS_THRESHOLDS_PX)
    },
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "epe": "EPE (px)",
    "en": "EN",
    "std": "STD",
    "ag": "AG",
    "sf": "SF",
    "mi": "MI",
    "qabf": "Qabf",
}


def summarise(values: Iterable[float | None]) -> dict:
    """``{"mean", "std", "n"}`` of the non-``None`` values (population std);
    mean and std are ``None`` when there is no value."""
    present = np.array([value for value in values if value is not None], dtype=np.float64)
    if present.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(present.mean()), "std": float(present.std()), "n": int(present.size)}


def aggregate(
    per_image: Sequence[dict], section: str, methods: Sequence[str], metrics: Sequence[str]
) -> dict:
    """``{method: {metric: summary}}`` of ``per_image[i][section][method][metric]``.

    A metric no image has for a method (it does not apply) is left out.
    """
    table = {}
    for method in methods:
        rows = [record[section][method] for record in per_image]
        table[method] = {
            metric: summarise(row.get(metric) for row in rows)
            for metric in metrics
            if any(metric in row for row in rows)
        }
    return table


def best_methods(row: dict[str, dict | None], lower_is_better: bool) -> set[str]:
    """The methods whose displayed mean is the best of the row (all of them on a tie);
    none when fewer than two methods have a value (nothing to compare)."""
    displayed = {
        method: round(stats["mean"], PRECISION)
        for method, stats in row.items()
        if stats is not None and stats["mean"] is not None
    }
    if len(displayed) < 2:
        return set()
    best = min(displayed.values()) if lower_is_better else max(displayed.values())
    return {method for method, value in displayed.items() if value == best}


def _cell(stats: dict | None, metric: str) -> str:
    if stats is None or stats["mean"] is None:
        return MISSING_CELL
    if metric in SUCCESS_METRICS:
        count = round(stats["mean"] * stats["n"])
        return f"{count}/{stats['n']} ({100.0 * stats['mean']:.1f}%)"
    return f"{stats['mean']:.{PRECISION}f} ± {stats['std']:.{PRECISION}f}"


def format_table(summary: dict, section: str, style: str = "markdown") -> str:
    """One results table: methods as columns, metrics as rows, the best per row marked.

    Args:
      summary: ``{method: {metric: {"mean", "std", ...}}}`` (:func:`aggregate`).
      section: ``"registration"`` or ``"fusion"`` (chooses the better direction).
      style: ``"markdown"`` (best in ``**bold**``) or ``"text"`` (best followed by
        `` *``), both padded into aligned columns.
    """
    methods = list(summary)
    metrics = []
    for method in methods:
        metrics += [metric for metric in summary[method] if metric not in metrics]
    rows = [
        (METRIC_LABELS.get(metric, metric), metric, {m: summary[m].get(metric) for m in methods})
        for metric in metrics
    ]
    return _render_table("metric", methods, rows, section, style)


def format_category_table(by_category: dict, style: str = "markdown") -> str:
    """The registration table per category: for each category, a row per metric of
    :data:`CATEGORY_METRICS` that it has, labelled ``"category (n=pairs): metric"``.

    Args:
      by_category: ``{category: {method: {metric: summary}}}``, not empty, every
        category with the same methods.
      style: as :func:`format_table`.
    """
    methods = list(next(iter(by_category.values())))
    rows = []
    for category, summary in by_category.items():
        pairs = max(stats["n"] for table in summary.values() for stats in table.values())
        for metric in CATEGORY_METRICS:
            row = {method: summary[method].get(metric) for method in methods}
            if any(stats is not None for stats in row.values()):
                label = f"{category} (n={pairs}): {METRIC_LABELS[metric]}"
                rows.append((label, metric, row))
    return _render_table("category: metric", methods, rows, "registration", style)


def _render_table(
    corner: str,
    methods: list[str],
    rows: list[tuple[str, str, dict]],
    section: str,
    style: str,
) -> str:
    """Renders ``rows`` of ``(label, metric, {method: summary or None})`` under a header
    of ``corner`` and the method labels; see :func:`format_table`."""
    if style not in ("markdown", "text"):
        raise ValueError(f"style must be 'markdown' or 'text', got {style!r}")
    lower = LOWER_IS_BETTER[section]
    header = [corner] + [METHOD_LABELS.get(method, method) for method in methods]
    body = []
    for label, metric, row in rows:
        best = best_methods(row, metric in lower)
        arrow = "↓" if metric in lower else "↑"
        cells = [f"{label} {arrow}"]
        for method in methods:
            text = _cell(row[method], metric)
            if method in best:
                text = f"**{text}**" if style == "markdown" else f"{text} *"
            cells.append(text)
        body.append(cells)
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]

    def render(cells: list[str]) -> str:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths)]
        if style == "markdown":
            return "| " + " | ".join(padded) + " |"
        return "  ".join(padded).rstrip()

    rule = (
        "|" + "|".join("-" * (width + 2) for width in widths) + "|"
        if style == "markdown"
        else "  ".join("-" * width for width in widths)
    )
    return "\n".join([render(header), rule, *(render(cells) for cells in body)])


def results_markdown(
    title: str,
    summary: dict,
    conventions: str,
    notes: Sequence[str],
    number_of_pairs: int,
    by_category: dict | None = None,
    plot: str | None = None,
) -> str:
    """The whole results.md: title, conventions, the two tables (Table 1 followed by the
    success plot ``plot``, a file name beside results.md, and the per-category table
    when given), notes."""
    registration = [format_table(summary["registration"], "registration"), ""]
    if plot:
        registration += [
            f"![Share of pairs registered within each landmark RMSE, per method]({plot})",
            "",
        ]
    if by_category:
        registration += [
            "### Registration by category",
            "",
            format_category_table(by_category),
            "",
        ]
    lines = [
        f"# RFNet evaluation: {title}",
        "",
        f"{number_of_pairs} pair(s). Cells are mean ± standard deviation over the pairs "
        "(population standard deviation); the best mean of each row is in bold "
        "(↓: lower is better, ↑: higher is better; with a single method nothing is bold).",
        "",
        f"Metric conventions: **{conventions}**.",
        "",
        "## Registration (paper Table 1)",
        "",
        *registration,
        "## Fusion (paper Table 2)",
        "",
        format_table(summary["fusion"], "fusion") if summary["fusion"] else "(no fusion method)",
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in notes),
        "",
    ]
    return "\n".join(lines)


def terminal_report(
    title: str,
    summary: dict,
    conventions: str,
    notes: Sequence[str],
    by_category: dict | None = None,
) -> str:
    """Both tables (and the per-category one when given) as aligned plain text (best
    marked ``*``), for the terminal."""
    parts = [f"RFNet evaluation: {title}", f"metric conventions: {conventions}", ""]
    for section, name in (
        ("registration", "Registration (paper Table 1)"),
        ("fusion", "Fusion (paper Table 2)"),
    ):
        if summary[section]:
            parts += [name, format_table(summary[section], section, style="text"), ""]
        if section == "registration" and by_category:
            parts += [
                "Registration by category",
                format_category_table(by_category, style="text"),
                "",
            ]
    parts += [f"note: {note}" for note in notes]
    return "\n".join(parts)


def write_json(path: str | os.PathLike, results: dict) -> Path:
    """Writes ``results`` as strict JSON, atomically; a NaN or infinity raises ``ValueError``."""
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    return write_text(path, text)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes a UTF-8 text file atomically (``rfnet_tf.staging.write_atomically``)."""
    return write_atomically(path, text.encode("utf-8"))
