"""Writing a study's report: JSON rows, markdown tables and log-log plots of error against NFE."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from .._files import atomic_write
from .study import Study

__all__ = ["write_report", "orders_table", "rows_table", "plot_study"]

_METRIC_LABELS = {
    ("ode", "error"): "RMS error of x at t_min vs exact flow",
    ("likelihood", "error"): "mean |error| of log p (nats)",
    "strong_error": "strong error (RMS vs fine solve, same path)",
    "weak_error": "weak error (mean + cov vs fine solve)",
    "w2": "Gaussian W2 of moments vs exact law",
    "sw2": "sliced W2 vs exact sample",
}


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if v == 0 or not math.isfinite(v):
            return f"{v:g}"
        return f"{v:.2f}" if 0.1 <= abs(v) < 100 else f"{v:.2e}"
    return str(v)


def orders_table(study: Study) -> str:
    """Markdown table of declared against measured order, one line per method and fitted metric.

    The verdict column reads "yes", "**no**: why" (pre-asymptotic, round-off floor, ...) or "–" when
    there is no order to compare (with the reason, e.g. a Hutchinson estimate's probe noise).
    """
    lines = [
        "| method | kind | metric | declared order | measured order | agrees | smallest error | largest NFE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in study.orders:
        declared = o["declared"]
        if declared is not None and o["kind"] == "adaptive":
            declared = f">= {declared - 1:g} (order {declared:g})"
        elif declared is not None and o["kind"] == "pathwise":
            declared = f"{declared:g} ({'weak' if o['metric'] == 'weak_error' else 'strong'}, at least)"
        verdict = _fmt(o["agrees"])
        if o.get("reason"):
            verdict = f"{verdict}: {o['reason']}"
        cells = (o["method"], o["kind"], o["metric"], declared, o["measured"], verdict, o["min_error"], o["max_nfe"])
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def rows_table(study: Study) -> str:
    """Markdown table of every row (method x setting)."""
    skip = {"study", "problem"}
    keys = [k for k in study.rows[0] if k not in skip] if study.rows else []
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for r in study.rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def _label(study: Study, metric: str) -> str:
    return _METRIC_LABELS.get((study.name, metric), _METRIC_LABELS.get(metric, metric))


def plot_study(study: Study, metric: str, path: Path) -> Path:
    """Log-log plot of ``metric`` against NFE, one line per method, labelled with the measured order.

    A method whose points equal an earlier method's is drawn dashed with hollow markers over it, and
    says so in the legend; a method without an order says why (e.g. probe noise) in a footnote;
    the Monte-Carlo spread of exact samples, when the study has one, is a grey band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    drawn: dict[str, list] = {}
    footnotes = []
    for method in dict.fromkeys(r["method"] for r in study.rows):
        pts = sorted((r["nfe"], r[metric]) for r in study.rows if r["method"] == method and r.get(metric))
        if not pts:
            continue
        order = next((o for o in study.orders if o["method"] == method and o["metric"] == metric), {})
        label = method if order.get("measured") is None else f"{method} (order {order['measured']:.2f})"
        twin = next((m for m, p in drawn.items() if p == pts), None)
        style = {"marker": "o", "markersize": 4}
        if twin is not None:
            label += f", identical to {twin}"
            style = {"marker": "s", "markersize": 9, "markerfacecolor": "none", "linestyle": "--", "linewidth": 2}
        elif order.get("measured") is None and order.get("reason"):
            label += f" [{len(footnotes) + 1}]"
            footnotes.append(f"[{len(footnotes) + 1}] {method}: {order['reason']}")
        ax.loglog(*zip(*pts), label=label, **style)
        drawn[method] = pts
    band = study.config.get("monte_carlo_range", {}).get(metric)
    floor = study.config.get("monte_carlo_floor", {}).get(metric)
    if band:
        replicates = study.config.get("monte_carlo_replicates", "")
        ax.axhspan(*band, color="grey", alpha=0.2, label=f"range of {replicates} exact samples of the same size")
    if floor:
        ax.axhline(floor, color="grey", linestyle=":", label="exact samples: median (Monte-Carlo floor)")
    ax.set_xlabel("NFE (score evaluations)")
    ax.set_ylabel(_label(study, metric))
    ax.set_title(f"{study.name.upper()} study, {study.problem}")
    # NFE labels at powers of two only, written out: the default minor labels (2x10^1, 3x10^1, ...) collide.
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if footnotes:
        fig.text(0.01, 0.01, "\n".join(footnotes), fontsize=7, va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.04 * len(footnotes) + 0.02, 1, 1))
    else:
        fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def write_report(
    studies: Sequence[Study], out_dir: str | Path, *, plots: bool = True, command: str | None = None
) -> dict[str, Path]:
    """Write ``<study>.json`` (config, orders and one row per method x setting), ``report.md`` and PNG plots.

    Returns:
        The written files by name (``"report"``, ``"<study>_json"``, ``"<study>_<metric>_png"``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    md = ["# scoreflow convergence report", ""]
    if command:
        md += [f"Command: `{command}`", ""]
    for study in studies:
        path = out / f"{study.name}.json"
        payload = {
            "study": study.name,
            "problem": study.problem,
            "config": study.config,
            "orders": study.orders,
            "rows": study.rows,
        }
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(payload, indent=1))
        files[f"{study.name}_json"] = path
        md += [
            f"## {study.name.upper()} study: {study.problem}",
            "",
            "Config: " + ", ".join(f"{k}={v}" for k, v in study.config.items()),
            "",
        ]
        md += [orders_table(study), ""]
        md += [f"Note: {note}" for note in study.notes] + ([""] if study.notes else [])
        if plots:
            for metric in study.metrics:
                if any(r.get(metric) for r in study.rows):
                    png = plot_study(study, metric, out / f"{study.name}_{metric}.png")
                    files[f"{study.name}_{metric}_png"] = png
                    md += [f"![{study.name} {metric}]({png.name})", ""]
        md += ["<details><summary>All rows</summary>", "", rows_table(study), "", "</details>", ""]
    report = out / "report.md"
    with atomic_write(report) as tmp:
        tmp.write_text("\n".join(md))
    files["report"] = report
    return files
