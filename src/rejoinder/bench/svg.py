"""Inline SVG charts for the bench report, drawn by hand: no libraries, no scripts.

Each chart function returns one ``<svg>`` element as a string, sized by its
viewBox (the page's CSS scales it down to fit). All text is escaped here; the
caller passes plain strings. Three kinds: horizontal box plots on a shared
axis, the waterfall of one turn, and lines over concurrency levels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

TARGET_COLOR = "#c0392b"
_GRID = "#e3e6ea"
_AXIS = "#5f6b7a"


@dataclass(frozen=True)
class Box:
    """One row of a box plot; ``stats`` is (p5, p25, p50, p75, p95, max), None when empty."""

    label: str
    stats: tuple[float, float, float, float, float, float] | None
    fill: str
    stroke: str


@dataclass(frozen=True)
class Bar:
    """One waterfall bar from 0 to ``end``; the part after ``step_from`` is drawn solid."""

    label: str
    end: float
    step_from: float
    light: str
    solid: str
    text: str


@dataclass(frozen=True)
class Series:
    """One line of a line chart: a y value (or None, a gap) per x."""

    name: str
    ys: tuple[float | None, ...]
    color: str
    dashed: bool = False


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 times a power of ten."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * (1 - 1e-9))
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    return [round(first + i * step, 9) for i in range(round((last - first) / step) + 1)]


def _num(v: float) -> str:
    return f"{v:.6g}"


def _text(x: float, y: float, s: str, anchor: str = "start", cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{c}>{escape(s)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1.0,
          dash: str = "") -> str:
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{stroke}" stroke-width="{width}"{d}/>')


def _rect(x: float, y: float, w: float, h: float, fill: str, stroke: str = "none") -> str:
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.0):.1f}" height="{h:.1f}" '
            f'fill="{fill}" stroke="{stroke}"/>')


def _svg(width: int, height: float, label: str, body: list[str]) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height:.0f}" width="{width}" '
            f'height="{height:.0f}" role="img" aria-label="{escape(label)}">'
            + "".join(body) + "</svg>")


def _x_axis(ticks: Sequence[float], sx: Callable[[float], float], top: float, bottom: float,
            label: str, center: float) -> list[str]:
    out = [_line(sx(t), top, sx(t), bottom, _GRID) for t in ticks]
    out += [_text(sx(t), bottom + 14, _num(t), "middle", "small") for t in ticks]
    out.append(_line(sx(ticks[0]), bottom, sx(ticks[-1]), bottom, _AXIS))
    out.append(_text(center, bottom + 31, label, "middle", "muted"))
    return out


def _legend(items: Sequence[tuple[str, str]], x0: float, y0: float, x_max: float,
            ) -> tuple[list[str], float]:
    """Lay out (glyph svg at origin, name) pairs in rows; return the parts and the last y."""
    out, x, y = [], x0, y0
    for glyph, name in items:
        w = 30 + 6.6 * len(name)
        if x + w > x_max and x > x0:
            x, y = x0, y + 17
        out.append(f'<g transform="translate({x:.1f},{y:.1f})">{glyph}</g>')
        out.append(_text(x + 24, y + 4, name, cls="small"))
        x += w + 8
    return out, y


def _target_legend(target: float) -> tuple[str, str]:
    return _line(0, 0, 18, 0, TARGET_COLOR, 1.5, "4 3"), f"{_num(target)} ms p95 target"


def box_plot(rows: Sequence[Box], *, x_max: float, axis_label: str,
             target: float | None = None, width: int = 1000) -> str:
    """Horizontal box plots on one ms axis: whiskers p5-p95, box p25-p75, p50 line, max."""
    left, right, row_h = 150.0, 150.0, 26.0
    x1 = width - right
    legend = [
        (_rect(0, -6, 18, 12, "#dfe6ee", _AXIS), "p25-p75"),
        (_line(9, -7, 9, 7, _AXIS, 2), "p50"),
        (_line(0, 0, 18, 0, _AXIS) + _line(0, -4, 0, 4, _AXIS) + _line(18, -4, 18, 4, _AXIS),
         "p5-p95"),
        ('<path d="M9,-5 L14,0 L9,5 L4,0 Z" fill="#1d2733"/>', "max"),
    ]
    if target is not None:
        legend.append(_target_legend(target))
    body, y_leg = _legend(legend, left, 14.0, x1)
    top = y_leg + 18
    bottom = top + row_h * max(len(rows), 1)
    ticks = nice_ticks(0.0, x_max)
    hi = ticks[-1]

    def sx(v: float) -> float:
        return left + (x1 - left) * min(max(v, 0.0), hi) / hi

    body += _x_axis(ticks, sx, top, bottom, axis_label, (left + x1) / 2)
    if target is not None and target <= hi:
        body.append(_line(sx(target), top, sx(target), bottom, TARGET_COLOR, 1.5, "4 3"))
    for i, row in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        body.append(_text(left - 8, cy + 4, row.label, "end"))
        if row.stats is None:
            body.append(_text(left + 6, cy + 4, "no data", cls="muted"))
            continue
        p5, p25, p50, p75, p95, mx = row.stats
        body += [_line(sx(p5), cy, sx(p95), cy, row.stroke),
                 _line(sx(p5), cy - 5, sx(p5), cy + 5, row.stroke),
                 _line(sx(p95), cy - 5, sx(p95), cy + 5, row.stroke),
                 _rect(sx(p25), cy - 8, sx(p75) - sx(p25), 16, row.fill, row.stroke),
                 _line(sx(p50), cy - 8, sx(p50), cy + 8, row.stroke, 2.5)]
        if mx <= hi:
            x = sx(mx)
            body.append(f'<path d="M{x:.1f},{cy - 5:.1f} L{x + 5:.1f},{cy:.1f} '
                        f'L{x:.1f},{cy + 5:.1f} L{x - 5:.1f},{cy:.1f} Z" fill="#1d2733"/>')
        else:  # off the axis: an arrow at the edge, with the value
            body.append(f'<path d="M{x1 - 6:.1f},{cy - 5:.1f} L{x1:.1f},{cy:.1f} '
                        f'L{x1 - 6:.1f},{cy + 5:.1f} Z" fill="#1d2733"/>')
            body.append(_text(x1 - 9, cy - 6, f"max {mx:.0f}", "end", "small"))
        body.append(_text(x1 + 10, cy + 4, f"p50 {p50:.0f} · p95 {p95:.0f}", cls="small"))
    return _svg(width, bottom + 44, "box plots: " + axis_label, body)


def waterfall(bars: Sequence[Bar], *, x_max: float, title: str, axis_label: str,
              width: int = 520) -> str:
    """Bars from 0 to each time, in order; the step since the previous bar drawn solid."""
    left, right, top, row_h = 130.0, 112.0, 30.0, 24.0
    x1 = width - right
    bottom = top + row_h * max(len(bars), 1)
    ticks = nice_ticks(0.0, x_max)
    hi = ticks[-1]

    def sx(v: float) -> float:
        return left + (x1 - left) * min(max(v, 0.0), hi) / hi

    body = [_text(8, 16, title, cls="title")]
    body += _x_axis(ticks, sx, top, bottom, axis_label, (left + x1) / 2)
    for i, bar in enumerate(bars):
        y = top + row_h * i + 5
        body.append(_text(left - 8, y + 11, bar.label, "end"))
        body.append(_rect(sx(0), y, sx(bar.end) - sx(0), 14, bar.light))
        if bar.end > bar.step_from:
            body.append(_rect(sx(bar.step_from), y, sx(bar.end) - sx(bar.step_from), 14,
                              bar.solid))
        body.append(_text(sx(bar.end) + 5, y + 11, bar.text, cls="small"))
    return _svg(width, bottom + 44, title, body)


def line_chart(xs: Sequence[float], series: Sequence[Series], *, title: str, x_label: str,
               y_label: str, target: float | None = None, width: int = 520,
               x_ticks: Sequence[float] | None = None, markers: bool = True) -> str:
    """Lines over numeric x, y from 0 (or below); ticks at each x unless ``x_ticks`` names
    them (for many points); a marker at each point unless ``markers`` is False."""
    left, right, plot_h = 62.0, 20.0, 200.0
    x1 = width - right
    legend = [(_line(0, 0, 18, 0, s.color, 2, "5 3" if s.dashed else "")
               + f'<circle cx="9" cy="0" r="3" fill="{s.color}"/>', s.name) for s in series]
    if target is not None:
        legend.append(_target_legend(target))
    body, y_leg = _legend(legend, left, 36.0, x1)
    body.insert(0, _text(8, 16, title, cls="title"))
    top = y_leg + 18
    bottom = top + plot_h
    ys = [y for s in series for y in s.ys if y is not None]
    ys += [target] if target is not None else []
    yticks = nice_ticks(min([0.0, *ys]), max([1.0, *ys]), 5)
    lo_x, hi_x = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if hi_x <= lo_x:
        lo_x, hi_x = lo_x - 1, hi_x + 1
    pad = (hi_x - lo_x) * 0.05

    def sx(v: float) -> float:
        return left + (x1 - left) * (v - lo_x + pad) / (hi_x - lo_x + 2 * pad)

    def sy(v: float) -> float:
        return bottom - plot_h * (v - yticks[0]) / (yticks[-1] - yticks[0])

    for t in yticks:
        body.append(_line(left, sy(t), x1, sy(t), _GRID))
        body.append(_text(left - 6, sy(t) + 4, _num(t), "end", "small"))
    for x in sorted(set(xs if x_ticks is None else x_ticks)):
        body.append(_line(sx(x), bottom, sx(x), bottom + 4, _AXIS))
        body.append(_text(sx(x), bottom + 16, _num(x), "middle", "small"))
    body += [_line(left, top, left, bottom, _AXIS), _line(left, bottom, x1, bottom, _AXIS),
             _text((left + x1) / 2, bottom + 34, x_label, "middle", "muted"),
             f'<text transform="translate(16,{(top + bottom) / 2:.1f}) rotate(-90)" '
             f'text-anchor="middle" class="muted">{escape(y_label)}</text>']
    if target is not None:
        body.append(_line(left, sy(target), x1, sy(target), TARGET_COLOR, 1.5, "4 3"))
    for s in series:
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        run: list[str] = []
        for x, y in [*zip(xs, s.ys, strict=True), (0.0, None)]:  # None closes the last run
            if y is None:
                if len(run) > 1:
                    body.append(f'<polyline points="{" ".join(run)}" fill="none" '
                                f'stroke="{s.color}" stroke-width="2"{dash}/>')
                run = []
                continue
            run.append(f"{sx(x):.1f},{sy(y):.1f}")
            if markers:
                body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" '
                            f'fill="{s.color}"/>')
    return _svg(width, bottom + 46, title, body)
