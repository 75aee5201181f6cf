"""HTML building blocks: every string escaped, every image inline, nothing fetched.

The page carries a Content-Security-Policy that allows inline styles and ``data:`` images only: a
browser opening it makes no request at all, and anything that tried would be a console error (the
report's test fails on any console message).
"""

from __future__ import annotations

import base64
import html
import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final

CSP: Final = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)
STYLE: Final = """
body { font-family: "DejaVu Sans", Verdana, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 0 24px 48px; color: #222; font-size: 14px; line-height: 1.45; }
h1 { font-size: 24px; margin: 20px 0 4px; }
h2 { font-size: 19px; border-bottom: 2px solid #2166ac; padding-bottom: 3px; margin-top: 30px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: #555; margin: 0 0 10px; }
nav a { margin-right: 12px; color: #2166ac; text-decoration: none; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eef2f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 8px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
figcaption { color: #555; font-size: 12.5px; margin-top: 3px; }
.nodata { color: #777; font-style: italic; }
.good { color: #1b7837; font-weight: bold; }
.bad { color: #b2182b; font-weight: bold; }
.problem { color: #b2182b; }
code { font-size: 12px; background: #f4f4f4; padding: 0 3px; }
ul { margin: 4px 0 10px; padding-left: 22px; }
"""


def esc(value: object) -> str:
    """Text from a file, safe as HTML content and as a quoted attribute value."""
    return html.escape(value if isinstance(value, str) else str(value), quote=True)


def num(x: float | None, digits: int = 4, *, sign: bool = True) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def ci(interval: tuple[float, float] | None, digits: int = 4) -> str:
    if interval is None:
        return "no interval"
    return f"[{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"


def when(ts: float | None) -> str:
    if ts is None:
        return "–"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "–"


def nodata(text: str) -> str:
    return f'<p class="nodata">No data yet: {esc(text)}</p>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()) -> str:
    """A table of escaped cells; columns in ``numeric`` right-aligned. Cells are text, never markup."""
    right = set(numeric)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if i in right else f"<td>{esc(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png_size(png: bytes) -> tuple[int, int]:
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def figure(fig_id: str, png: bytes, alt: str, caption: str) -> str:
    """An inline PNG (``data:`` URI) in a ``<figure id=...>`` with its caption."""
    width, height = _png_size(png)
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{esc(fig_id)}"><img alt="{esc(alt)}" width="{width}" height="{height}" '
        f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>'
    )


def section(sec_id: str, title: str, body: str) -> str:
    return f'<section id="{esc(sec_id)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: str) -> str:
    links = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f'<body><h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p><nav>{links}</nav>'
        f"{body}</body></html>\n"
    )
