"""Draw docs/deployment.png: which part of DIMEE runs where, and what crosses each link.

    .venv/bin/python docs/deployment_diagram.py        # -> docs/deployment.png
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).with_name("deployment.png")

BOXES = {  # name: (x, y, width, height, title, lines)
    "device": (0.02, 0.30, 0.28, 0.45, "Device (phone, small box)", [
        "dimee export RUN --tier mobile --format onnx",
        "mobile.onnx: embeddings, layers 1..m,",
        "  exits 1..m, embedding feature",
        "tokenizer.json, policy.json, run.json",
        "services.device.MobileClient",
        "onnxruntime + tokenizers, no torch",
    ]),
    "edge": (0.36, 0.30, 0.28, 0.45, "Edge site", [
        "dimee serve --tier edge  (uvicorn)",
        "or dimee serve-ray: edge=N replicas",
        "  behind Ray's HTTP proxy (/edge)",
        "layers m+1..e (1..e for token ids)",
        "the same policy decides again",
        "/healthz /readyz /metrics",
    ]),
    "cloud": (0.70, 0.30, 0.28, 0.45, "Cloud region", [
        "dimee serve --tier cloud",
        "or dimee serve-ray: cloud=MIN-MAX",
        "  (Ray autoscaling)",
        "layers e+1..L (all L for token ids)",
        "answers every sample it gets",
        "/healthz /readyz /metrics",
    ]),
}
ARROWS = (  # (from, to, label, y, rad)
    ("device", "edge", "", 0.55, 0.0),
    ("edge", "cloud", "", 0.55, 0.0),
    ("device", "cloud", "direct routes: token ids or hidden states straight to cloud", 0.80, -0.2),
)


def draw(out: Path = OUT) -> Path:
    fig = Figure(figsize=(12, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0.05, 1.0)
    ax.axis("off")
    for x, y, w, h, title, lines in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.01", fc="#eef3fb", ec="#4c72b0", lw=1.5))
        ax.text(x + w / 2, y + h - 0.05, title, ha="center", va="top", fontsize=12, weight="bold")
        for i, line in enumerate(lines):
            ax.text(x + 0.01, y + h - 0.12 - i * 0.052, line, ha="left", va="top", fontsize=8.5, family="monospace")
    for src, dst, label, y, rad in ARROWS:
        sx, _, sw, _, *_ = BOXES[src]
        dx, *_ = BOXES[dst]
        start, end = (sx + sw, y), (dx, y)
        if rad:
            start, end = (sx + sw / 2, BOXES[src][1] + BOXES[src][3]), (dx + BOXES[dst][2] / 2, BOXES[dst][1] + BOXES[dst][3])
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=16, lw=1.4, color="#333333",
                                     connectionstyle=f"arc3,rad={rad}"))  # fmt: skip
        if label:
            ax.text((start[0] + end[0]) / 2, 0.93, label, ha="center", va="center", fontsize=8.5)
    ax.text(0.5, 0.25, "Arrows: a handoff, HTTP POST of one binary body (the codec's metadata section, then the "
            "hidden states after the sender's last layer, or token ids).", ha="center", va="top", fontsize=9)
    ax.text(0.5, 0.19, "Every handoff carries X-DIMEE-Token (one shared secret: DIMEE_HANDOFF_TOKEN on all three; TLS "
            "beyond loopback).\nA tier that cannot reach the next answers at its deepest exit, degraded, with a "
            "reason code (next_tier_unreachable, next_tier_error, ...).\nMonitor: degraded answers by reason, "
            "per-tier latency and batch size (/metrics, Prometheus), handoff resends under Ray.",
            ha="center", va="top", fontsize=9)  # fmt: skip
    fig.savefig(out)
    return out


if __name__ == "__main__":
    print(f"wrote {draw()}")
