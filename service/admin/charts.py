"""A tiny server-side SVG line chart: axes, "nice" ticks, labels, points (no third-party files)."""

from __future__ import annotations

import math
from html import escape


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-6), math.floor(hi / step + 1e-6)
    return [k * step for k in range(first, min(last, first + 50) + 1)]


def _fmt(v: float) -> str:
    return "0" if v == 0 else f"{v:.3g}"


def line_chart(points: list[tuple[float, float]], *, title: str, y_label: str, x_label: str = "version",
               width: int = 440, height: int = 200) -> str:
    """An accessible SVG line chart of (x, y) points, x = version number. Non-finite y are dropped."""
    pts = sorted((float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y))
    t = escape(title)
    if not pts:
        return (f'<svg role="img" aria-label="{t}: no data yet" class="chart" width="{width}" height="60" viewBox="0 0 {width} 60">'
                f'<text x="10" y="24" class="ctitle">{t}</text><text x="10" y="44" class="tick">no data yet</text></svg>')
    pad_l, pad_r, pad_t, pad_b = 64, 14, 26, 40
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y_lo, y_hi = min(ys), max(ys)
    if y_hi == y_lo:
        pad = abs(y_lo) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    yt = nice_ticks(y_lo, y_hi)
    y0, y1 = min(yt[0], y_lo), max(yt[-1], y_hi)

    def px(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return pad_t + h - (y - y0) / (y1 - y0) * h

    grid = "".join(
        f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{py(v):.1f}" y2="{py(v):.1f}" class="grid"/>'
        f'<text x="{pad_l - 5}" y="{py(v) + 3.5:.1f}" text-anchor="end" class="tick">{_fmt(v)}</text>'
        for v in yt if y0 <= v <= y1
    )
    distinct = sorted(set(xs))
    stride = max(1, math.ceil(len(distinct) / 12))  # at most ~12 labels on the x axis
    xt = "".join(
        f'<text x="{px(x):.1f}" y="{pad_t + h + 15}" text-anchor="middle" class="tick">v{int(x)}</text>'
        for i, x in enumerate(distinct) if i % stride == 0 or i == len(distinct) - 1
    )
    path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(pts))
    dots = "".join(
        f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" data-x="{int(x)}" data-y="{y!r}"><title>v{int(x)}: {y:.4g}</title></circle>'
        for x, y in pts
    )
    mid = pad_t + h / 2
    return (
        f'<svg role="img" aria-label="{t}" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<title>{t}</title><text x="{pad_l}" y="15" class="ctitle">{t}</text>{grid}{xt}'
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" class="axis"/>'
        f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" class="axis"/>'
        f'<text x="14" y="{mid:.0f}" transform="rotate(-90 14 {mid:.0f})" class="tick" text-anchor="middle">{escape(y_label)}</text>'
        f'<text x="{pad_l + w / 2:.0f}" y="{height - 6}" class="tick" text-anchor="middle">{escape(x_label)}</text>'
        f'<path d="{path}" class="line"/>{dots}</svg>'
    )
