"""A tiny server-side SVG line chart (no third-party files)."""

from __future__ import annotations

import math
from html import escape


def line_chart(points: list[tuple[float, float]], *, title: str, y_label: str, width: int = 420, height: int = 180, log_y: bool = False) -> str:
    pad_l, pad_r, pad_t, pad_b = 56, 12, 24, 34
    if not points:
        return f'<svg role="img" aria-label="{escape(title)}: no data" width="{width}" height="{height}"><text x="10" y="20">{escape(title)}: no data</text></svg>'
    xs = [p[0] for p in points]

    def fy(v: float) -> float:
        return math.log10(max(v, 1e-300)) if log_y else v

    ys = [fy(p[1]) for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 or 1), y1 + (abs(y1) * 0.1 or 1)
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def px(x):
        return pad_l + (x - x0) / (x1 - x0) * w

    def py(y):
        return pad_t + h - (y - y0) / (y1 - y0) * h

    path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(fy(v)):.1f}" for i, (x, v) in enumerate(points))
    dots = "".join(
        f'<circle cx="{px(x):.1f}" cy="{py(fy(v)):.1f}" r="3"><title>v{int(x)}: {v:.4g}</title></circle>' for x, v in points
    )
    def ylab(y):
        return f"1e{y:.0f}" if log_y else f"{y:.3g}"
    ticks = "".join(
        f'<text x="{pad_l - 4}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{ylab(t)}</text>'
        f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
        for t in (y0, (y0 + y1) / 2, y1)
    )
    xt = "".join(f'<text x="{px(x):.1f}" y="{pad_t + h + 16}" text-anchor="middle" class="tick">v{int(x)}</text>' for x in sorted(set(xs)))
    return (
        f'<svg role="img" aria-label="{escape(title)}" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<title>{escape(title)}</title><text x="{pad_l}" y="14" class="ctitle">{escape(title)}</text>{ticks}{xt}'
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" class="axis"/>'
        f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" class="axis"/>'
        f'<text x="12" y="{pad_t + h / 2:.0f}" transform="rotate(-90 12 {pad_t + h / 2:.0f})" class="tick" text-anchor="middle">{escape(y_label)}</text>'
        f'<path d="{path}" class="line"/>{dots}</svg>'
    )
