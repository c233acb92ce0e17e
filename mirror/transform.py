"""Pure functions from YTS API JSON to database rows. They never mutate their input."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote_plus

import orjson

# The trackers the API documentation recommends for magnet links (yts-api-v2.txt, "List Movies").
DEFAULT_TRACKERS: tuple[str, ...] = (
    "udp://open.demonii.com:1337",
    "udp://tracker.istole.it:80",
    "http://tracker.yify-torrents.com/announce",
    "udp://tracker.publicbt.com:80",
    "udp://tracker.openbittorrent.com:80",
    "udp://tracker.coppersurfer.tk:6969",
    "udp://exodus.desync.com:6969",
    "http://exodus.desync.com:6969/announce",
)

MOVIE_TEXT_FIELDS = (
    "imdb_code", "title", "title_english", "title_long", "slug", "url", "summary",
    "description_full", "synopsis", "yt_trailer_code", "language", "mpa_rating",
    "background_image", "background_image_original", "small_cover_image",
    "medium_cover_image", "large_cover_image", "state", "date_uploaded",
)
MOVIE_INT_FIELDS = ("year", "runtime", "date_uploaded_unix")
MOVIE_COLUMNS = ("id",) + MOVIE_TEXT_FIELDS + MOVIE_INT_FIELDS + ("rating", "genres", "raw", "list_hash")

DETAIL_TEXT_FIELDS = (
    "description_intro",
    "medium_screenshot_image1", "medium_screenshot_image2", "medium_screenshot_image3",
    "large_screenshot_image1", "large_screenshot_image2", "large_screenshot_image3",
)
DETAIL_INT_FIELDS = ("like_count", "download_count")

TORRENT_TEXT_FIELDS = (
    "url", "quality", "type", "video_codec", "audio_channels", "size", "date_uploaded",
)
TORRENT_INT_FIELDS = ("is_repack", "bit_depth", "seeds", "peers", "size_bytes", "date_uploaded_unix")
TORRENT_COLUMNS = ("hash", "movie_id") + TORRENT_TEXT_FIELDS + TORRENT_INT_FIELDS + ("magnet",)


def dumps(value: Any) -> str:
    """Serialize JSON compactly, as the API sends it; orjson, or json for what orjson refuses."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


SQLITE_INT_RANGE = range(-2**63, 2**63)  # what an INTEGER column holds; beyond it, a value is lost (None)


def to_int(value: Any) -> int | None:
    """Coerce the API's loose integers ("8", "", 8, 8.0, None) to int or None, keeping SQLite's range."""
    # bit_depth "8" and is_repack "0" or "": movie_details__GabJS10-yts-movie-player.json
    number = _loose_int(value)
    return number if number is None or number in SQLITE_INT_RANGE else None


def _loose_int(value: Any) -> int | None:
    if type(value) is str and value.isdigit() and value.isascii():
        return int(value) if len(value) < 20 else None  # beyond SQLite's range anyway; int() refuses 4,300 digits
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, int):
        return value
    if not isinstance(value, float):
        value = str(value).strip()
        if not value or not value.isascii() or "_" in value:  # float() would take "1_000" and "٣"
            return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):  # "x", and NaN or Infinity, which Python's json accepts
        return None


def to_id(value: Any) -> int | None:
    """A movie id as the API means it: a positive whole number (8 or "8"), else None; never True or 1.5."""
    if type(value) is str:
        value = value.strip()
        value = int(value) if value.isascii() and value.isdigit() and len(value) < 20 else None
    elif type(value) is float and value.is_integer():
        value = int(value)
    return value if type(value) is int and value > 0 and value in SQLITE_INT_RANGE else None


def to_float(value: Any) -> float | None:
    """Coerce a rating that may be an int, a float or a string to float or None."""
    # Whole ratings come as ints ("rating":8): list_movies__1eeyerin-netflix-app.json
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def to_text(value: Any) -> str | None:
    """Coerce a scalar to str, keeping None; containers become JSON."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, (list, dict)):
        return dumps(value)
    return str(value)


@functools.lru_cache(maxsize=8)
def _tracker_params(trackers: tuple[str, ...]) -> str:
    return "".join("&tr=" + quote_plus(tracker, safe=":/") for tracker in trackers)


def _magnet_suffix(name: str | None, trackers: tuple[str, ...]) -> str:
    """The part of a movie's magnet URIs after the info hash, as the API docs build them: its name, then the trackers."""
    return ("&dn=" + quote_name(name) if name else "") + _tracker_params(trackers)


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_QUOTE_ASCII = {c: "+" if c == 32 else f"%{c:02X}" for c in range(128) if c not in _UNRESERVED}


def quote_name(name: str) -> str:
    """quote_plus(name), faster for the ASCII names most movies have."""
    return name.translate(_QUOTE_ASCII) if name.isascii() else quote_plus(name)


# Swarm counts as they appear in the JSON we store; stripped before hashing.
_VOLATILE = re.compile(r'"(?:seeds|peers)": ?(?:-?\d+|"[^"]*"|null)')


def list_hash(raw: str) -> str:
    """Hash a movie's list JSON text, ignoring swarm counts, to tell real changes apart."""
    stable = _VOLATILE.sub("", raw).encode()
    return hashlib.blake2b(stable, digest_size=12).hexdigest()


def mappings(value: Any) -> list[Mapping[str, Any]]:
    """The objects of a JSON array, in order; none for anything else (a number where a list belongs)."""
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def normal_hash(value: Any) -> str:
    """A torrent's info hash as the `torrents` table keys it: trimmed, upper case ('' for none)."""
    return str(value).strip().upper() if value else ""


def genres_of(movie: Mapping[str, Any]) -> list[str]:
    """Return a movie's genres, deduplicated in order; the key can be missing."""
    # One movie lacks "genres" entirely: list_movies__bbak0105-Clone_Movie_React.json
    genres = movie.get("genres") or []
    seen: dict[str, None] = {}
    for genre in [genres] if isinstance(genres, str) else genres if isinstance(genres, list) else []:
        if isinstance(genre, str) and genre.strip():
            seen.setdefault(genre.strip(), None)
    return list(seen)


def _copy_fields(row: dict[str, Any], source: Mapping[str, Any], texts: Iterable[str] = (),
                ints: Iterable[str] = ()) -> dict[str, Any]:
    """Add `source`'s fields to `row`, coerced with to_text and to_int (clean values pass as they are); return it."""
    get = source.get
    for field in texts:
        value = get(field)
        row[field] = value if value is None or type(value) is str else to_text(value)
    for field in ints:
        value = get(field)
        row[field] = value if type(value) is int and value in SQLITE_INT_RANGE else to_int(value)
    return row


def movie_row(movie: Mapping[str, Any], raw: str | None = None) -> dict[str, Any]:
    """Turn one list_movies movie into a `movies` row (without bookkeeping timestamps)."""
    row = _copy_fields({"id": to_id(movie.get("id"))}, movie, MOVIE_TEXT_FIELDS, MOVIE_INT_FIELDS)
    row["rating"] = to_float(movie.get("rating"))
    row["genres"] = dumps(genres_of(movie))
    row["raw"] = raw if raw is not None else dumps(movie)
    row["list_hash"] = list_hash(row["raw"])
    return row


def torrent_rows(
    movie: Mapping[str, Any], trackers: Iterable[str] = DEFAULT_TRACKERS
) -> list[dict[str, Any]]:
    """Turn a movie's torrents into `torrents` rows, hashes upper-cased, repeats dropped."""
    movie_id = to_id(movie.get("id"))
    magnet_suffix = _magnet_suffix(to_text(movie.get("title_long") or movie.get("title")), tuple(trackers))
    rows: dict[str, dict[str, Any]] = {}
    for torrent in mappings(movie.get("torrents")):
        info_hash = normal_hash(torrent.get("hash"))
        if not info_hash:
            continue
        row = _copy_fields({"hash": info_hash, "movie_id": movie_id}, torrent, TORRENT_TEXT_FIELDS, TORRENT_INT_FIELDS)
        row["magnet"] = f"magnet:?xt=urn:btih:{info_hash}{magnet_suffix}"
        rows[info_hash] = row
    return list(rows.values())


def genre_rows(movie: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Turn a movie's genres into `movie_genres` rows."""
    movie_id = to_id(movie.get("id"))
    return [{"movie_id": movie_id, "genre": genre} for genre in genres_of(movie)]


@dataclass(frozen=True)
class PageRows:
    """The rows of one list page: movies and genres by movie id, and the torrents."""

    movies: dict[int, dict[str, Any]]
    genres: dict[int, list[dict[str, Any]]]
    torrents: list[dict[str, Any]]


def page_rows(movies: Sequence[Mapping[str, Any]], trackers: Iterable[str] = DEFAULT_TRACKERS) -> PageRows:
    """Turn a list page's movies into rows; a movie repeated on one page counts once (the last)."""
    by_id: dict[int, tuple[dict[str, Any], Mapping[str, Any]]] = {}
    for movie in movies:
        row = movie_row(movie)
        if row["id"] is not None:  # no usable id: SQLite would invent one
            by_id[row["id"]] = (row, movie)
    tracker_list = tuple(trackers)
    return PageRows(
        movies={movie_id: row for movie_id, (row, _) in by_id.items()},
        genres={movie_id: genre_rows(movie) for movie_id, (_, movie) in by_id.items()},
        torrents=[t for _, movie in by_id.values() for t in torrent_rows(movie, tracker_list)],
    )


class PageValues(NamedTuple):
    """A page's rows as tuples in MOVIE_COLUMNS and TORRENT_COLUMNS order, as the store binds them."""

    movies: dict[int, tuple[Any, ...]]
    genres: dict[int, list[tuple[int, str]]]  # (movie_id, genre)
    torrents: list[tuple[Any, ...]]


LIST_HASH_AT = MOVIE_COLUMNS.index("list_hash")
HASH_AT = TORRENT_COLUMNS.index("hash")
_movie_values = operator.itemgetter(*MOVIE_COLUMNS)
_torrent_values = operator.itemgetter(*TORRENT_COLUMNS)


def page_values(rows: PageRows) -> PageValues:
    """A page's rows as the column-ordered tuples the store writes (and a page reader process sends)."""
    return PageValues(
        movies={movie_id: _movie_values(row) for movie_id, row in rows.movies.items()},
        genres={movie_id: [(g["movie_id"], g["genre"]) for g in genres] for movie_id, genres in rows.genres.items()},
        torrents=[_torrent_values(t) for t in rows.torrents],
    )


def is_placeholder(movie: Mapping[str, Any] | None) -> bool:
    """True for the status-ok placeholder movie_details returns for an unknown id."""
    # id 0, title null: movie_details__GabJS10-yts-movie-player-not_found.json
    return movie is not None and to_int(movie.get("id")) == 0


def found_details(data: Mapping[str, Any] | None, movie_id: int) -> Mapping[str, Any] | None:
    """The movie a movie_details `data` describes, or None when it answers "not found" for `movie_id`."""
    movie = details_movie(data)
    # The id-0 placeholder means not found: movie_details__GabJS10-yts-movie-player-not_found.json.
    # Fetches retry what is no answer at all (details_no_answer); this is the last guard.
    if movie is None or to_id(movie.get("id")) != movie_id:  # the placeholder's id is 0
        return None
    return movie


def details_no_answer(data: Mapping[str, Any] | None, movie_id: int) -> str | None:
    """Why a movie_details `data` is neither movie `movie_id` nor the not-found placeholder; None when it is one."""
    movie = details_movie(data)
    if movie is None:  # "data": null, say: no word on whether the movie exists
        return f"movie_details for movie {movie_id} answered without a movie"
    found = to_id(movie.get("id"))
    if found is None and not is_placeholder(movie):
        return f"movie_details for movie {movie_id} answered with a movie without a usable id"
    if found and found != movie_id:
        return f"movie_details for movie {movie_id} answered with movie {found}"
    return None


# Each per-movie list endpoint's list keys and count keys, both as 2015 and as later answers named them.
CHILD_LISTS = {
    "movie_suggestions": (("movies", "movie_suggestions"), ("movie_count", "movie_suggestions_count")),
    "movie_reviews": (("reviews",), ("review_count",)),
    "movie_parental_guides": (("parental_guides",), ("parental_guide_count",)),
    "movie_comments": (("comments",), ("comment_count",)),
}


def children_no_answer(endpoint: str, data: Mapping[str, Any] | None) -> str | None:
    """Why a per-movie list answer says nothing (neither its list nor a count of 0); None when it answers."""
    lists, counts = CHILD_LISTS[endpoint]
    if isinstance(data, Mapping):
        if any(isinstance(data.get(key), list) for key in lists):
            return None
        # An empty list may be left out, as list_movies__yts-api-rs-empty.json leaves out "movies".
        if any(to_int(data.get(key)) == 0 for key in counts):
            return None
    return f"{endpoint} answered without its list"


def details_movie(data: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Return the movie object of a movie_details `data`, old schema or new."""
    if not isinstance(data, Mapping):
        return None
    movie = data.get("movie")
    if isinstance(movie, Mapping):
        return movie
    # 2015 schema: the movie fields sit directly under data (movie_details__jonlunsford-yify-2015.json)
    return data if "id" in data else None


def details_row(movie: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a movie_details movie into the details-only `movies` columns."""
    # 2015 kept the screenshots in an "images" object: movie_details__jonlunsford-yify-2015.json
    images = movie.get("images")
    images = images if isinstance(images, Mapping) else {}
    row: dict[str, Any] = {
        field: to_text(movie.get(field, images.get(field))) for field in DETAIL_TEXT_FIELDS
    }
    _copy_fields(row, movie, ints=DETAIL_INT_FIELDS)
    row["cast_names"] = " ".join(member["name"] for member in cast_rows(movie) if member["name"]) or None
    return row


def cast_rows(movie: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Turn a movie_details cast into `movie_cast` rows; url_small_image may be missing."""
    # 2 of 4 cast entries lack url_small_image: movie_details__yts-api-rs-images-cast.json
    members = movie.get("cast")
    if members is None:  # 2015 schema named them "actors" (movie_details__jonlunsford-yify-2015.json)
        members = movie.get("actors")
    movie_id = to_id(movie.get("id"))
    return [
        {
            "movie_id": movie_id,
            "position": position,
            "imdb_code": to_text(member.get("imdb_code")),
            "name": to_text(member.get("name")),
            "character_name": to_text(member.get("character_name")),
            # 2015 named the thumbnail small_image (medium_image was full size): movie_details__jonlunsford-yify-2015.json
            "url_small_image": to_text(member.get("url_small_image", member.get("small_image"))),
        }
        for position, member in enumerate(mappings(members))
    ]


def suggestion_movies(data: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Return the suggested movies of a movie_suggestions `data`."""
    if not isinstance(data, Mapping):
        return []
    # 2015 named the list "movie_suggestions" (movie_suggestions__jonlunsford-yify-2015.json);
    # movie_count can be 0 while movies are present (movie_suggestions__GabJS10-yts-movie-player.json)
    movies = data.get("movies", data.get("movie_suggestions"))
    return [m for m in mappings(movies) if to_id(m.get("id"))]


def suggestion_rows(movie_id: int, data: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Turn a movie_suggestions `data` into `movie_suggestions` rows."""
    return [
        {"movie_id": movie_id, "position": position, "suggested_id": to_id(movie["id"])}
        for position, movie in enumerate(suggestion_movies(data))
    ]


def review_rows(movie_id: int, data: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Turn a movie_reviews `data` into `movie_reviews` rows."""
    reviews = data.get("reviews") if isinstance(data, Mapping) else None
    return [
        {
            "movie_id": movie_id,
            "position": position,
            "username": to_text(review.get("username")),
            "user_rating": to_int(review.get("user_rating")),
            "user_location": to_text(review.get("user_location")),
            "review_summary": to_text(review.get("review_summary")),
            "review_text": to_text(review.get("review_text")),
            "date_written": to_text(review.get("date_written")),
            "date_written_unix": to_int(review.get("date_written_unix")),
        }
        for position, review in enumerate(mappings(reviews))
    ]


def parental_guide_rows(movie_id: int, data: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Turn a movie_parental_guides `data` into `movie_parental_guides` rows."""
    guides = data.get("parental_guides") if isinstance(data, Mapping) else None
    return [
        {
            "movie_id": movie_id,
            "position": position,
            "type": to_text(guide.get("type")),
            "parental_guide_text": to_text(guide.get("parental_guide_text")),
        }
        for position, guide in enumerate(mappings(guides))
    ]


COMMENT_TEXT_FIELDS = (
    "username", "user_profile_url", "small_user_avatar_image", "medium_user_avatar_image",
    "user_group", "comment_text", "date_added",
)
COMMENT_INT_FIELDS = ("comment_id", "user_id", "like_count", "date_added_unix")


def comment_rows(movie_id: int, data: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Turn a movie_comments `data` into `movie_comments` rows."""
    comments = data.get("comments") if isinstance(data, Mapping) else None
    rows = []
    for position, comment in enumerate(mappings(comments)):
        row: dict[str, Any] = {"movie_id": movie_id, "position": position}
        row.update({field: to_text(comment.get(field)) for field in COMMENT_TEXT_FIELDS})
        row.update({field: to_int(comment.get(field)) for field in COMMENT_INT_FIELDS})
        rows.append(row)
    return rows


def movie_count(data: Mapping[str, Any]) -> int:
    """A list_movies `data`'s movie_count, 0 when missing or unreadable."""
    return to_int(data.get("movie_count")) or 0


def echoed_paging(data: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The page_number and limit a list_movies `data` says it answers, None where missing or unreadable."""
    # Both echo the request: limit 5 and page_number 1 for limit=5&page=1 in list_movies__GabJS10-yts-movie-player.json
    return to_int(data.get("page_number")), to_int(data.get("limit"))


def listed_ids(movies: Iterable[Mapping[str, Any]]) -> list[int]:
    """The ids of movies `list_page_movies` returned (each has a usable id)."""
    return [to_id(movie["id"]) or 0 for movie in movies]


def listed_count(data: Mapping[str, Any] | None) -> int:
    """How many entries a list page's `movies` holds, usable or not: one without a usable id still takes its place."""
    movies = data.get("movies") if isinstance(data, Mapping) else None
    return len(movies) if isinstance(movies, list) else 0


def list_page_movies(data: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Return the movies of a list_movies `data`; the key is absent on an empty page."""
    # No "movies" key when empty: list_movies__yts-api-rs-empty.json
    if not isinstance(data, Mapping):
        return []
    return [m for m in mappings(data.get("movies")) if to_id(m.get("id"))]
