"""The report's figures: accuracy against latency for fp32 and int8, measured here and
predicted for the device, the found models' front and the baselines, as a PNG (matplotlib)
and an interactive page (plotly)."""

from __future__ import annotations

import math
from pathlib import Path

from search.pareto import front_2d
from spaces.files import write_bytes, write_text

__all__ = ["LATENCIES", "minor_log_label", "plot_html", "plot_png", "PRECISIONS"]

PRECISIONS = {"fp32": "model.onnx", "int8": "model.int8.onnx"}  # each precision's file
LATENCIES = {"host_ms": "measured here", "device_ms": "predicted for the device"}


def _panels(report: dict):
    dev = report["context"]["device"]
    for row, precision in enumerate(PRECISIONS):
        for col, latency in enumerate(LATENCIES):
            title = (f"{precision}: latency measured here (1 thread)" if latency == "host_ms"
                     else f"{precision}: latency predicted for {dev}")
            pts = {kind: [(m[latency][precision], 100 * m["accuracy"][precision], m["name"])
                          for m in report["models"] if m["kind"] == kind]
                   for kind in ("found", "baseline")}
            yield row, col, title, pts


def _floor(pts: dict) -> float:
    """The accuracy axis starts a few points under the found models and the baselines within
    10 points of them, so one failed model does not flatten the rest."""
    found = [p[1] for p in pts["found"]] or [p[1] for p in pts["baseline"]] or [0.0]
    near = [p[1] for p in pts["found"] + pts["baseline"] if p[1] >= min(found) - 10]
    return max(0.0, min(near) - 2)


def minor_log_label(value: float, _pos) -> str:
    """A log axis' minor tick label at 2, 3 and 5 times a power of ten only (all nine crowd
    each other where a panel spans one decade)."""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (2, 3, 5)) else ""


def plot_png(report: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter

    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    for row, col, title, pts in _panels(report):
        ax = axes[row][col]
        floor = _floor(pts)
        if pts["found"]:
            x, y, _ = zip(*pts["found"])
            ax.scatter(x, y, c="tab:blue", s=28, label="found (edgenas)", zorder=3)
            fy, fx, _ = zip(*front_2d([(a, lat, n) for lat, a, n in pts["found"]]))
            ax.step(fx, fy, where="post", c="tab:blue", lw=1, alpha=0.7, label="found: front")
        shown = [p for p in pts["baseline"] if p[1] >= floor]
        low = [p for p in pts["baseline"] if p[1] < floor]
        if shown:
            x, y, _ = zip(*shown)
            ax.scatter(x, y, c="tab:orange", marker="s", s=32, label="baselines", zorder=3)
        if low:  # far below the rest: drawn on the lower edge with their accuracy
            x, _, _ = zip(*low)
            ax.scatter(x, [floor] * len(low), c="tab:orange", marker="v", s=40, zorder=3,
                       clip_on=False, label="baselines below the axis")
        for i, (xi, yi, name) in enumerate(sorted(pts["baseline"])):
            text = name if yi >= floor else f"{name} ({yi:.1f}%)"
            ax.annotate(text, (xi, max(yi, floor)), fontsize=7, rotation=20,
                        xytext=(3, 4 if i % 2 == 0 else -11), textcoords="offset points")
        ax.set_ylim(floor, None)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FuncFormatter(minor_log_label))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("test accuracy, %")
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles),
               fontsize=9)
    fig.suptitle(f"{report['context']['dataset']}: found models and hand-designed baselines, "
                 f"same training recipe", fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def plot_html(report: dict, path: Path, plotly_js: str) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = list(_panels(report))
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[2] for p in panels])
    by_name = {m["name"]: m for m in report["models"]}

    def hover(name: str) -> str:
        m = by_name[name]
        return (f"<b>{name}</b> ({m['kind']})<br>params {m['params']:,}, MACs "
                f"{m['macs'] / 1e6:.2f}M<br>accuracy fp32 {100 * m['accuracy']['fp32']:.2f}%,"
                f" int8 {100 * m['accuracy']['int8']:.2f}%<br>here fp32 "
                f"{m['host_ms']['fp32']:.3f} ms, int8 {m['host_ms']['int8']:.3f} ms<br>"
                f"device fp32 {m['device_ms']['fp32']:.3f} ms, int8 "
                f"{m['device_ms']['int8']:.3f} ms, {m['device_energy_mj']['int8']:.3f} mJ")

    for i, (row, col, _, pts) in enumerate(panels):
        for kind, color, symbol in (("found", "#1f77b4", "circle"),
                                    ("baseline", "#ff7f0e", "square")):
            if not pts[kind]:
                continue
            x, y, names = zip(*pts[kind])
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="markers" if kind == "found" else "markers+text",
                text=None if kind == "found" else list(names), textposition="top center",
                textfont={"size": 9}, marker={"color": color, "symbol": symbol, "size": 9},
                name="found (edgenas)" if kind == "found" else "baselines", legendgroup=kind,
                showlegend=i == 0, hovertext=[hover(n) for n in names], hoverinfo="text"),
                row=row + 1, col=col + 1)
        if pts["found"]:
            fy, fx, _ = zip(*front_2d([(a, lat, n) for lat, a, n in pts["found"]]))
            fig.add_trace(go.Scatter(x=fx, y=fy, mode="lines", line={"shape": "hv",
                                                                     "color": "#1f77b4"},
                                     name="found: front", legendgroup="front",
                                     showlegend=i == 0, hoverinfo="skip"),
                          row=row + 1, col=col + 1)
        fig.update_xaxes(type="log", title_text="latency, ms (log)", row=row + 1, col=col + 1)
        fig.update_yaxes(title_text="test accuracy, %", row=row + 1, col=col + 1)
    fig.update_layout(height=900, title=f"{report['context']['dataset']}: found models and "
                      "hand-designed baselines (hover for figures)")
    write_text(path, fig.to_html(include_plotlyjs=True if plotly_js == "inline" else "cdn",
                                 full_html=True))
