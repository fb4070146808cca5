"""Charts as inline SVG, drawn on the server: no charting script to vendor, nothing to load, the
page works offline and a screenshot shows exactly what the HTML says. Every text is escaped."""

from __future__ import annotations

from html import escape

COLORS = {"queued": "#9aa5b1", "running": "#3b82f6", "succeeded": "#16a34a", "failed": "#dc2626",
          "canceled": "#f59e0b"}


def _nice_max(value: int) -> int:
    """The smallest of 1, 2, 5 × 10^n at or above ``value`` (an axis that reads well)."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def stacked_bars(buckets: list[dict[str, int]], labels: list[str], order: list[str],
                 width: int = 1200, height: int = 220) -> str:
    """One bar per bucket, stacked by key in ``order`` (colors from :data:`COLORS`), with a
    y axis maximum, x labels and a legend. ``labels`` has one entry per bucket."""
    left, bottom, top = 36, 22, 18
    plot_h = height - bottom - top
    top_value = _nice_max(max((sum(b.get(k, 0) for k in order) for b in buckets), default=0))
    slot = (width - left) / max(1, len(buckets))
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="axis">{top_value}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" class="axis">0</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width}" y2="{top + plot_h}" class="base"/>']
    for i, bucket in enumerate(buckets):
        x = left + i * slot + slot * 0.15
        y: float = top + plot_h
        for key in order:
            n = bucket.get(key, 0)
            if n <= 0:
                continue
            h = plot_h * n / top_value
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                         f'fill="{COLORS.get(key, "#666")}"><title>{escape(labels[i])}: {n} {escape(key)}'
                         f'</title></rect>')
        if i % max(1, len(buckets) // 6) == 0:
            parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{height - 6}" text-anchor="middle" '
                         f'class="axis">{escape(labels[i])}</text>')
    lx = left
    for key in order:
        parts.append(f'<rect x="{lx}" y="2" width="10" height="10" fill="{COLORS.get(key, "#666")}"/>'
                     f'<text x="{lx + 14}" y="11" class="legend">{escape(key)}</text>')
        lx += 14 + 8 * len(key) + 16
    parts.append("</svg>")
    return "".join(parts)


def hbars(items: list[tuple[str, int]], color: str = COLORS["failed"], width: int = 480,
          row: int = 22) -> str:
    """Horizontal bars, one row per (label, count), longest first as given."""
    if not items:
        return '<p class="muted">none</p>'
    label_w = 180
    top_value = max(n for _, n in items)
    height = row * len(items) + 4
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    for i, (label, n) in enumerate(items):
        y = i * row + 2
        w = (width - label_w - 50) * n / top_value
        parts.append(f'<text x="{label_w - 6}" y="{y + row * 0.65:.1f}" text-anchor="end" class="legend">'
                     f'{escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{color}"/>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + row * 0.65:.1f}" class="legend">{n}</text>')
    parts.append("</svg>")
    return "".join(parts)
