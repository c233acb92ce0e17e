"""The movie page's data and the templates Datasette uses for mirror tables."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import BaseLoader, Environment, FileSystemLoader, Template, TemplateNotFound
from markupsafe import Markup, escape

from . import datasette_render as render

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_RE = re.compile(r"(row|_table-table|_table-row)-(.+)-(movies|movie_catalog|movie_search)\.html")
TEMPLATE_FILES = {
    ("row", "movies"): "yts_movie_row.html",
    ("_table-row", "movies"): "yts_record_table.html",
    ("_table-table", "movie_catalog"): "yts_catalog_table.html",
    ("_table-table", "movie_search"): "yts_catalog_table.html",
}
CATALOG_HIDDEN = frozenset({"id", "fts", "rank"})
QUALITY_ORDER = "CASE quality WHEN '2160p' THEN 0 WHEN '1080p' THEN 1 WHEN '720p' THEN 2 WHEN '3D' THEN 3 ELSE 4 END"


class MirrorTemplates(BaseLoader):
    """Answers Datasette's per-table template names (row-DB-movies.html...) for mirror databases only."""

    def __init__(self, mirrors: Callable[[], Mapping[str, Any]]):
        self.mirrors = mirrors
        self.files = FileSystemLoader(str(TEMPLATES_DIR))

    def load(self, environment: Environment, name: str, globals: Any = None) -> Template:  # noqa: A002
        match = TEMPLATE_RE.fullmatch(name)
        file = TEMPLATE_FILES.get((match.group(1), match.group(3))) if match else None
        if match is None or file is None or not self.names_mirror(match.group(2)):
            raise TemplateNotFound(name)
        return self.files.load(environment, file, globals)

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Callable[[], bool]]:
        raise TemplateNotFound(template)  # load() does the work

    def list_templates(self) -> list[str]:
        return []  # the names depend on the databases attached

    def names_mirror(self, css_name: str) -> bool:
        """True if a template name's database part is a mirror as Datasette writes it."""
        return any(css_class(name) == css_name for name in self.mirrors())


@functools.lru_cache(maxsize=256)
def css_class(name: str) -> str:
    """Datasette's CSS class for a column name."""
    from datasette.utils import to_css_class

    return to_css_class(name)


def catalog_rows(display_rows: list[list[dict[str, Any]]]) -> Markup:
    """The <tr>s of the catalog table, built in Python: a Jinja loop per cell is slow."""
    parts = []
    for row in display_rows:
        removed = any(cell["column"] == "removed_at" and cell["raw"] for cell in row)
        parts.append('<tr class="yts-gone">' if removed else "<tr>")
        for cell in row:
            if cell["column"] not in CATALOG_HIDDEN:
                parts.append(f'<td class="col-{escape(css_class(cell["column"]))} type-{escape(cell["value_type"])}">'
                             f'{escape(cell["value"])}</td>')
        parts.append("</tr>\n")
    return Markup("".join(parts))


async def rows(db: Any, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """Run a query on a Datasette database and return plain dicts."""
    result = await db.execute(sql, params)
    return [dict(row) for row in result.rows]


async def movie_page(db: Any, movie_id: int, movie_url: render.RowUrl, catalog_url: str) -> dict[str, Any] | None:
    """Everything the movie page shows beyond the movies row, with URLs already checked."""
    found = await rows(db, "SELECT * FROM movies WHERE id = ?", [movie_id])
    if not found:
        return None
    movie = found[0]
    return {
        "movie": movie_summary(movie, catalog_url),
        "torrents": [torrent_item(t) for t in await rows(
            db, f"SELECT * FROM torrents WHERE movie_id = ? ORDER BY removed_at IS NOT NULL, {QUALITY_ORDER}, seeds DESC",
            [movie_id])],
        "cast": [cast_item(c) for c in await rows(
            db, "SELECT * FROM movie_cast WHERE movie_id = ? ORDER BY position", [movie_id])],
        "suggestions": [suggestion_item(s, movie_url) for s in await rows(
            db, "SELECT s.suggested_id, m.title, m.year, m.medium_cover_image, m.removed_at "
                "FROM movie_suggestions s LEFT JOIN movies m ON m.id = s.suggested_id "
                "WHERE s.movie_id = ? ORDER BY s.position", [movie_id])],
        "reviews": await rows(db, "SELECT * FROM movie_reviews WHERE movie_id = ? ORDER BY position", [movie_id]),
        "guides": await rows(db, "SELECT * FROM movie_parental_guides WHERE movie_id = ? ORDER BY position", [movie_id]),
        "comments": await rows(db, "SELECT * FROM movie_comments WHERE movie_id = ? ORDER BY position", [movie_id]),
    }


def movie_summary(movie: Mapping[str, Any], catalog_url: str) -> dict[str, Any]:
    """The header of a movie page."""
    return {
        "id": movie["id"],
        "title": movie.get("title") or movie.get("title_english") or f"movie {movie['id']}",
        "year": movie.get("year"),
        "facts": render.facts(movie),
        "genres": [(genre, f"{catalog_url}?_genre={quote(genre)}") for genre in render.genre_list(movie.get("genres"))],
        "description": movie.get("description_full") or movie.get("summary") or movie.get("description_intro"),
        "cover": render.http_url(movie.get("large_cover_image")) or render.http_url(movie.get("medium_cover_image")),
        "removed_at": movie.get("removed_at"),
        "uploaded": movie.get("date_uploaded"),
        "links": [(label, url) for label, url in (
            ("YTS page", render.http_url(movie.get("url"))),
            ("IMDb", render.imdb_title_url(movie.get("imdb_code"))),
            ("Trailer", render.trailer_url(movie.get("yt_trailer_code"))),
        ) if url],
    }


def torrent_item(torrent: Mapping[str, Any]) -> dict[str, Any]:
    """One torrent row of a movie page."""
    return {
        "hash": torrent["hash"],
        "quality": torrent.get("quality"),
        "kind": " ".join(str(v) for v in (torrent.get("type"), torrent.get("video_codec"),
                                          torrent.get("audio_channels") and f"{torrent['audio_channels']} ch") if v),
        "size": render.human_size(torrent.get("size_bytes")) or torrent.get("size"),
        "seeds": torrent.get("seeds"),
        "peers": torrent.get("peers"),
        "magnet": render.magnet_url(torrent.get("magnet")),
        "url": render.http_url(torrent.get("url")),
        "removed_at": torrent.get("removed_at"),
    }


def cast_item(member: Mapping[str, Any]) -> dict[str, Any]:
    """One cast member of a movie page."""
    return {
        "name": member.get("name"),
        "character": member.get("character_name"),
        "photo": render.http_url(member.get("url_small_image")),
        "imdb": render.imdb_name_url(member.get("imdb_code")),
    }


def suggestion_item(row: Mapping[str, Any], movie_url: render.RowUrl) -> dict[str, Any]:
    """One suggested movie; linked when it is in the mirror."""
    mirrored = row.get("title") is not None
    return {
        "id": row["suggested_id"],
        "title": row.get("title") if mirrored else f"movie {row['suggested_id']} (not mirrored yet)",
        "year": row.get("year"),
        "href": movie_url(row["suggested_id"]) if mirrored else None,
        "cover": render.http_url(row.get("medium_cover_image")),
        "removed_at": row.get("removed_at"),
    }
