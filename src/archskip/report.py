"""What the search learned, as pictures and a markdown report."""

from __future__ import annotations

import math
from pathlib import Path

from .io import atomic_write, atomic_write_text
from .plan import SearchResult


def plot_gates(result: SearchResult, path: str | Path) -> Path:
    """Left: the gates over the policy updates, or, for a search that measured plans without a bandit, each measured
    plan's selection metric (best first). Right: the final score per candidate (gates, or block influence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = result.plan.num_candidates
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    gated = bool(result.history and "gates" in result.history[0])
    if gated:
        steps = [h["micro_step"] for h in result.history]
        gates = np.array([h["gates"] for h in result.history])  # (updates, N)
        cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
        for i in range(n):
            style = "-" if i in result.plan.skip else ":"
            ax1.plot(steps, gates[:, i], style, color=cmap(i % cmap.N), label=str(i), lw=2 if i in result.plan.skip else 1)
        ax1.set_xlabel("training micro-batch")
        ax1.set_ylabel("gate g (higher = more skippable)")
        ax1.set_title(f"{result.method}: gates over the search")
        if n <= 32:
            ax1.legend(title="block", ncol=2 if n > 12 else 1, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    elif result.config.get("verification", {}).get("measured"):
        from .search.verify import measured_plans

        metric, measured = measured_plans(result.config["verification"])  # best first
        labels = [",".join(map(str, plan)) for plan, _ in measured]
        values = [value for _, value in measured]
        finite = [v for v in values if math.isfinite(v)]  # (a plan can overflow: inf is drawn to the edge)
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        ax1.barh(range(len(measured)), [v if math.isfinite(v) else (hi + (hi - lo) if v > 0 else lo) for v in values],
                 color=["tab:red" if plan == result.plan.skip else "tab:gray" for plan, _ in measured])
        ax1.set_yticks(range(len(measured)), labels, fontsize=7 if len(measured) > 16 else 9)
        if hi > lo:  # (the differences are what matters, not the distance from zero)
            ax1.set_xlim(lo - 0.25 * (hi - lo), hi + 0.05 * (hi - lo))
        ax1.invert_yaxis()
        ax1.set_xlabel(f"measured {metric} ({'lower' if metric == 'loss' else 'higher'} is better)")
        ax1.set_ylabel("plan (skipped blocks)")
        ax1.set_title(f"{result.method}: {len(measured)} plans measured")
    else:
        ax1.text(0.5, 0.5, f"{result.method}: no gate history", ha="center", va="center")
        ax1.set_axis_off()
    scores = np.array(result.scores, dtype=float)
    colors = ["tab:red" if i in result.plan.skip else "tab:gray" for i in range(n)]
    ax2.bar(range(n), scores, color=colors)
    ax2.set_xlabel("candidate block")
    ax2.set_ylabel("final gate (skippability)" if gated else "score (higher = more skippable)")
    ax2.set_title(f"plan: skip {list(result.plan.skip)}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return Path(path)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "—" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    body = [f"# {title}", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.rstrip(), ""]
    return atomic_write_text(path, "\n".join(body))
