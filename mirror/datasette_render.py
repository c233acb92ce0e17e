"""How mirror values look in Datasette: safe links and images, readable numbers. Pure functions.

Everything here treats API text as untrusted: values are escaped by markupsafe, and only
http(s) URLs (or magnet links built from a hash) ever become an href or a src.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

IMAGE_COLUMNS = frozenset({
    "cover", "small_cover_image", "medium_cover_image", "large_cover_image",
    "background_image", "background_image_original", "url_small_image",
    "medium_screenshot_image1", "medium_screenshot_image2", "medium_screenshot_image3",
    "large_screenshot_image1", "large_screenshot_image2", "large_screenshot_image3",
    "small_user_avatar_image", "medium_user_avatar_image",
})
MOVIE_TABLES = frozenset({"movies", "movie_catalog", "movie_search"})
MAGNET_RE = re.compile(r"magnet:\?xt=urn:btih:[0-9A-Za-z]{32,40}(&[^\s<>\"']*)?")
HTTP_RE = re.compile(r"https?://[^\s<>\"'\\]+", re.IGNORECASE)
TRAILER_RE = re.compile(r"[A-Za-z0-9_-]{11}")
IMDB_TITLE_RE = re.compile(r"tt\d{5,10}")
IMDB_NAME_RE = re.compile(r"(?:nm)?(\d{5,10})")

RowUrl = Callable[[int], str]


def http_url(value: Any) -> str | None:
    """Return the value if it is a plain http(s) URL, else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if HTTP_RE.fullmatch(value) else None


def magnet_url(value: Any) -> str | None:
    """Return the value if it is a magnet link for a BitTorrent info hash, else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if MAGNET_RE.fullmatch(value) else None


def trailer_url(code: Any) -> str | None:
    """A YouTube URL for a trailer code that looks like one."""
    return f"https://www.youtube.com/watch?v={code}" if isinstance(code, str) and TRAILER_RE.fullmatch(code) else None


def imdb_title_url(code: Any) -> str | None:
    """An IMDb URL for a movie's tt code."""
    return f"https://www.imdb.com/title/{code}/" if isinstance(code, str) and IMDB_TITLE_RE.fullmatch(code) else None


def imdb_name_url(code: Any) -> str | None:
    """An IMDb URL for an actor's code (with or without the nm prefix)."""
    match = IMDB_NAME_RE.fullmatch(code) if isinstance(code, str) else None
    return f"https://www.imdb.com/name/nm{match.group(1)}/" if match else None


def human_size(size: Any) -> str | None:
    """Bytes in binary units: 1536 -> '1.5 KiB'."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0:
        return None
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return None


def human_runtime(minutes: Any) -> str | None:
    """Minutes as '2 h 7 min' (None for missing or zero)."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0:
        return None
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest:02d} min" if hours else f"{rest} min"


def human_rating(rating: Any) -> str | None:
    """A 0-10 rating as '7.3 / 10'."""
    if isinstance(rating, bool) or not isinstance(rating, (int, float)):
        return None
    return f"{float(rating):.1f} / 10"


MAX_UNIX = 253402300799  # 9999-12-31 23:59:59 UTC: beyond it (milliseconds, say) datetime shows no date


def human_date(unix: Any) -> str | None:
    """A unix timestamp as a UTC date; None (the raw value is shown) when it is not a plausible one."""
    if isinstance(unix, bool) or not isinstance(unix, int) or not 0 < unix <= MAX_UNIX:
        return None
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d")


def genre_list(value: Any) -> list[str]:
    """The genres of a JSON array column; [] for anything else."""
    try:
        genres = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return []
    return [g for g in genres if isinstance(g, str)] if isinstance(genres, list) else []


def image(url: str, alt: str = "", height: int = 60) -> Markup:
    """An <img> for an already checked http(s) URL."""
    return Markup(f'<img src="{escape(url)}" alt="{escape(alt)}" height="{int(height)}" loading="lazy" '
                  'referrerpolicy="no-referrer" class="yts-img">')


def link(url: str, text: Any, css: str = "") -> Markup:
    """An <a> for an already checked URL."""
    css_attr = f' class="{escape(css)}"' if css else ""
    return Markup(f'<a href="{escape(url)}"{css_attr}>{escape(text)}</a>')


def removed_badge(removed_at: Any) -> Markup:
    """The marker shown next to a movie removed upstream."""
    return Markup(f'<span class="yts-removed" title="removed upstream {escape(removed_at)}" '
                  'style="background:#b00020;color:#fff;border-radius:3px;padding:0 4px;font-size:0.8em">removed</span>')


def row_value(row: Any, key: str) -> Any:
    """row[key] for a sqlite3.Row or a dict, None when absent."""
    try:
        return row[key] if key in row.keys() else None
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def movie_id_of(row: Any, table: str | None) -> int | None:
    """The movie a result row is about, when it is clearly one."""
    value = row_value(row, "movie_id")
    if value is None and (table in MOVIE_TABLES or table is None):
        value = row_value(row, "id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def render_value(column: str, value: Any, row: Any, table: str | None, row_url: RowUrl) -> Markup | None:
    """The HTML for one mirror cell, or None to leave it to Datasette (which escapes it)."""
    if value is None:
        return None
    if column in IMAGE_COLUMNS:
        url = http_url(value)
        if not url:
            return None
        movie_id = movie_id_of(row, table) if column == "cover" else None
        return link(row_url(movie_id), image(url)) if movie_id is not None else image(url)
    if column == "title" and (table in MOVIE_TABLES or table is None):
        return render_title(value, row, table, row_url)
    simple = SIMPLE_RENDERERS.get(column)
    if simple:
        text = simple(value)
        return escape(text) if text is not None else None
    if column == "magnet":
        url = magnet_url(value)
        return link(url, "magnet", "yts-magnet") if url else None
    if column == "removed_at":
        return removed_badge(value) + Markup(" ") + escape(value)
    if column == "genres":
        genres = genre_list(value)
        return escape(", ".join(genres)) if genres or value == "[]" else None
    if (column == "suggested_id" or (column == "movie_id" and table is None)) and isinstance(value, int):
        return link(row_url(value), value)
    return None


def render_title(value: Any, row: Any, table: str | None, row_url: RowUrl) -> Markup | None:
    """A movie title linked to its page, marked when removed upstream."""
    movie_id = movie_id_of(row, table)
    if movie_id is None:
        return None
    html = link(row_url(movie_id), value)
    removed_at = row_value(row, "removed_at")
    return html + Markup(" ") + removed_badge(removed_at) if removed_at else html


SIMPLE_RENDERERS: dict[str, Callable[[Any], str | None]] = {
    "size_bytes": human_size,
    "runtime": human_runtime,
    "rating": human_rating,
    "date_uploaded_unix": human_date,
}


def facts(movie: Mapping[str, Any]) -> list[str]:
    """The short facts line of a movie page: rating, runtime, language, MPA rating."""
    items = [human_rating(movie.get("rating")), human_runtime(movie.get("runtime"))]
    if movie.get("language"):
        items.append(f"language: {movie['language']}")
    if movie.get("mpa_rating"):
        items.append(f"rated {movie['mpa_rating']}")
    return [item for item in items if item]
