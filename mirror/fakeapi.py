"""A loopback YTS API v2 simulator, realistic to the recorded samples, for tests, the demo and benchmarks.

It reproduces the API's quirks (absent `movies` key on empty pages, the id-0 placeholder movie,
loose types, the plain-text 429) and injects faults on demand. The catalog can grow and shrink
while a client crawls it, by hand (`Catalog.add` / `Catalog.remove`, or POST /_admin/mutate) or
on a schedule (`churn`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import socket
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .shapes import SORT_KEYS, suggestion_form

HOST = "yts.fake"
GENRES = (
    "Action", "Adventure", "Animation", "Biography", "Comedy", "Crime", "Documentary", "Drama",
    "Family", "Fantasy", "History", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Sport",
    "Thriller", "War", "Western",
)
ADJECTIVES = (
    "Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Midnight", "Frozen", "Wild", "Lost",
    "Electric", "Distant", "Burning", "Quiet", "Savage", "Velvet", "Hollow", "Iron", "Secret", "Endless",
)
NOUNS = (
    "River", "Empire", "Garden", "Signal", "Harbor", "Witness", "Frontier", "Mirror", "Orchard", "Storm",
    "Kingdom", "Passage", "Voyage", "Machine", "Island", "Letter", "Shadow", "Summer", "Circus", "Engine",
)
WORDS = (
    "detective", "astronaut", "village", "heist", "family", "war", "journey", "secret", "love", "revenge",
    "robot", "ocean", "desert", "mountain", "island", "city", "prison", "school", "dragon", "ghost",
    "doctor", "pilot", "musician", "chef", "boxer", "spy", "queen", "farmer", "hacker", "priest",
)
FIRST_NAMES = (
    "Ada", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kofi", "Lena",
    "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Talia", "Umar", "Vera", "Wim", "Ximena",
)
LAST_NAMES = (
    "Abara", "Brandt", "Castellano", "Duval", "Eriksen", "Fontaine", "Gallo", "Haddad", "Ivanova", "Jansen",
    "Kowalski", "Laurent", "Moreau", "Nakamura", "Okafor", "Petrova", "Quintero", "Rossi", "Sato", "Toivonen",
)
ACCENTED = ("Aglaé", "Café Noir", "Mañana", "Straße", "Øresund", "Città Aperta", "Été — Encore", "Zoë")
QUALITIES = (("720p", "x264", "2.0"), ("1080p", "x264", "5.1"), ("2160p", "x265", "5.1"), ("3D", "x264", "5.1"))
LANGUAGES = ("en", "en", "en", "en", "fr", "es", "de", "ja", "ko", "it", "tr", "hi")
MPA = ("", "PG", "PG-13", "R", "G", "NR", "TV-MA", "12")
RATE_LIMIT_BODY = (
    "Thanks for your interest! It looks like you've reached our request limit for now. This is just a "
    "temporary pause to keep things running smoothly. If you\ufffdd like us to review or increase your access, "
    "please reach out to support@yts.ag. Be sure to include a little information about your app or website "
    "and your IP address."
)
CLOUDFLARE_HTML = (
    "<!DOCTYPE html><html><head><title>{host} | 503: Service temporarily unavailable</title></head>"
    "<body><div id=\"cf-error-details\"><h1>Error 503</h1><p>Service temporarily unavailable</p>"
    "<p>Cloudflare Ray ID: {ray}</p></div></body></html>"
)
MAINTENANCE_HTML = "<html><head><title>YTS</title></head><body><h1>Maintenance, back soon</h1></body></html>"
FAULT_KINDS = ("http503", "html200", "truncated", "error", "reset", "429")
EXTRA_FAULT_KINDS = ("timeout", "stray", "empty", "stale", "badcount")
LIST_FAULT_KINDS = frozenset({"empty", "stale", "badcount"})  # answers only list_movies can get wrong
SIMULATED_ENDPOINTS = (
    "list_movies", "movie_details", "movie_suggestions", "movie_reviews", "movie_parental_guides",
    "movie_comments", "list_upcoming",
)


def _hash40(*parts: Any) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest().upper()


def _query_term(params: Mapping[str, str]) -> str | None:
    """The list_movies search text; the reference gives 0 as the default, meaning none."""
    term = params.get("query_term")
    return None if not term or term == "0" else term


def _slugify(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def _size_text(size: int) -> str:
    return f"{size / 2**30:.2f} GB" if size >= 2**30 else f"{size / 2**20:.2f} MB"


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class Catalog:
    """The simulator's movie catalog: generated from a seed, mutable while served."""

    def __init__(self, movies: int = 1000, seed: int = 1, start_time: int = 1_500_000_000):
        self.seed = seed
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.movies: dict[int, dict[str, Any]] = {}
        self.extra: dict[int, dict[str, Any]] = {}  # details-only data per movie
        self.date_added: dict[int, int] = {}
        self.order: list[int] = []  # newest date_added first
        self.removed: dict[int, dict[str, Any]] = {}
        self._encoded: dict[int, bytes] = {}
        self._next_id = 1
        self._clock = start_time
        self.add(movies)

    # ---- generation ------------------------------------------------------------------------

    def _new_movie(self, movie_id: int, added: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """A new movie's list JSON and its details-only data, the same for the same seed and id."""
        rng = random.Random(f"{self.seed}:{movie_id}")  # each step below draws from it in turn
        shapes = random.Random(f"{self.seed}:shapes:{movie_id}")  # apart, so the shapes leave rng's draws as they were
        movie = _list_movie(rng, movie_id, added, shapes.choice(ACCENTED) if shapes.random() < 0.05 else None)
        _loosen(rng, movie)
        for index, (quality, codec, channels) in enumerate(rng.sample(QUALITIES[:3], rng.randint(1, 3))):
            movie["torrents"].append(self._new_torrent(rng, movie_id, index, quality, codec, channels, added))
        if rng.random() < 0.03:
            movie["torrents"].append(self._new_torrent(rng, movie_id, 9, *QUALITIES[3], added))
        extra = _details_extra(rng, movie, added)
        _older_shapes(shapes, movie, extra, added)
        return movie, extra

    def _new_torrent(self, rng: random.Random, movie_id: int, index: int, quality: str, codec: str,
                     channels: str, added: int) -> dict[str, Any]:
        info_hash = _hash40(self.seed, movie_id, index, quality)
        size = rng.randint(600 * 2**20, 8 * 2**30)
        uploaded = added + index * rng.randint(60, 7200)
        torrent: dict[str, Any] = {
            "url": f"https://{HOST}/torrent/download/{info_hash}",
            "hash": info_hash,
            "quality": quality,
            "type": rng.choice(("bluray", "web")),
            # is_repack is "0", "1" or "" (movie_details__GabJS10-yts-movie-player.json)
            "is_repack": rng.choice(("0", "0", "0", "1", "")),
            "video_codec": codec,
            "bit_depth": "10" if codec == "x265" else "8",
            "audio_channels": channels,
            "seeds": rng.randint(0, 500),
            "peers": rng.randint(0, 200),
            "size": _size_text(size),
            "size_bytes": size if rng.random() > 0.05 else str(size),
            "date_uploaded": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(uploaded)),
            "date_uploaded_unix": uploaded,
        }
        if rng.random() < 0.05:
            del torrent["type"]  # list_movies__flamingotiger-movie_app.json has no "type"
        return torrent

    # ---- mutation --------------------------------------------------------------------------

    def add(self, count: int) -> list[int]:
        """Add `count` new movies, newest first in date_added order; return their ids."""
        new_ids = []
        with self.lock:
            for _ in range(count):
                movie_id = self._next_id
                # ids have gaps: list_movies__GabJS10-yts-movie-player.json
                self._next_id += 1 if self.rng.random() > 0.1 else 2
                self._clock += self.rng.randint(60, 4000)
                movie, extra = self._new_movie(movie_id, self._clock)
                self.movies[movie_id] = movie
                self.extra[movie_id] = extra
                self.date_added[movie_id] = self._clock
                new_ids.append(movie_id)
            self.order[:0] = reversed(new_ids)
        return new_ids

    def remove(self, count: int = 0, ids: Iterable[int] = ()) -> list[int]:
        """Remove `count` random present movies, or the given ids; return the removed ids."""
        with self.lock:
            chosen = list(ids) or self.rng.sample(self.order, min(count, len(self.order)))
            for movie_id in chosen:
                if movie_id in self.movies:
                    self.removed[movie_id] = self.movies.pop(movie_id)
                    self.order.remove(movie_id)
                    self._encoded.pop(movie_id, None)
            return chosen

    def reseed(self, fraction: float = 1.0) -> int:
        """Change the seeds and peers of a fraction of the torrents; return how many changed."""
        changed = 0
        with self.lock:
            for movie_id, movie in self.movies.items():
                for torrent in movie["torrents"]:
                    if self.rng.random() < fraction:
                        torrent["seeds"] = self.rng.randint(0, 900)
                        torrent["peers"] = self.rng.randint(0, 300)
                        changed += 1
                self._encoded.pop(movie_id, None)
        return changed

    def edit(self, movie_id: int, **fields: Any) -> None:
        """Overwrite list fields of one movie (for tests)."""
        with self.lock:
            self.movies[movie_id].update(fields)
            self._encoded.pop(movie_id, None)

    def add_torrent(self, movie_id: int, quality: str = "3D") -> dict[str, Any]:
        """Give an existing movie one more torrent (changes its list data)."""
        with self.lock:
            movie = self.movies[movie_id]
            rng = random.Random(f"{self.seed}:{movie_id}:{len(movie['torrents'])}")
            torrent = self._new_torrent(rng, movie_id, 20 + len(movie["torrents"]), quality, "x264", "5.1",
                                        self.date_added[movie_id])
            movie["torrents"].append(torrent)
            self._encoded.pop(movie_id, None)
            return torrent

    def mutate(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Apply an admin mutation: {"add": n, "remove": n, "remove_ids": [...], "reseed": f}."""
        result: dict[str, Any] = {}
        if spec.get("add"):
            result["added"] = self.add(int(spec["add"]))
        if spec.get("remove") or spec.get("remove_ids"):
            result["removed"] = self.remove(int(spec.get("remove") or 0), spec.get("remove_ids") or ())
        if spec.get("reseed"):
            result["reseeded"] = self.reseed(float(spec["reseed"]))
        return result

    # ---- reading ---------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The whole present catalog: list JSON and details-only data per movie, newest first."""
        with self.lock:
            return {"order": list(self.order),
                    "movies": {str(i): self.movies[i] for i in self.order},
                    "extra": {str(i): self.extra[i] for i in self.order},
                    "suggestions": {str(i): self.suggestions(i) for i in self.order}}

    def ids(self) -> list[int]:
        """Present ids, newest first."""
        with self.lock:
            return list(self.order)

    def encoded(self, movie_id: int) -> bytes:
        """The list JSON of one movie, cached."""
        data = self._encoded.get(movie_id)
        if data is None:
            data = json.dumps(self.movies[movie_id], separators=(",", ":")).encode()
            self._encoded[movie_id] = data
        return data

    def sort_value(self, movie_id: int, key: str) -> Any:
        """The value list_movies sorts by (seeds and peers: the best torrent's)."""
        movie = self.movies[movie_id]
        if key == "date_added":
            return self.date_added[movie_id]
        if key in ("seeds", "peers"):
            return max((int(t.get(key) or 0) for t in movie["torrents"]), default=0)
        if key in ("like_count", "download_count"):
            return self.extra[movie_id][key] or 0
        if key == "title":
            return (movie.get("title") or "").lower()
        if key in ("year", "rating"):
            return _to_float(movie.get(key))
        raise KeyError(key)

    def matches(self, movie_id: int, quality: str | None, minimum_rating: float, query: str | None,
                genre: str | None) -> bool:
        """Apply list_movies filters to one movie."""
        movie = self.movies[movie_id]
        if quality and quality.lower() != "all" and not any(
            (t.get("quality") or "").lower() == quality.lower() for t in movie["torrents"]
        ):
            return False
        if minimum_rating and _to_float(movie.get("rating")) < minimum_rating:
            return False
        if genre and genre.lower() != "all" and genre.lower() not in (g.lower() for g in movie.get("genres") or []):
            return False
        if query:
            needle = query.lower()
            haystack = [movie.get("title") or "", movie.get("imdb_code") or ""]
            for member in self.extra[movie_id]["cast"]:
                haystack += [member["name"], member["imdb_code"], "nm" + member["imdb_code"]]
            if needle not in haystack[0].lower() and needle not in (h.lower() for h in haystack[1:]):
                return False
        return True

    def query(self, sort_by: str = "date_added", order_by: str = "desc", quality: str | None = None,
              minimum_rating: float = 0, query_term: str | None = None, genre: str | None = None) -> list[int]:
        """The ids list_movies returns, in order, before paging. Ties break on id."""
        with self.lock:
            filtered = any((quality and quality.lower() != "all", minimum_rating, query_term,
                            genre and genre.lower() != "all"))
            if not filtered and sort_by == "date_added" and order_by == "desc":
                return self.order  # the crawl's hot path: no copy
            ids = [i for i in self.order if self.matches(i, quality, minimum_rating, query_term, genre)]
            if sort_by == "date_added" and order_by == "desc":
                return ids
            ids.sort(key=lambda i: (self.sort_value(i, sort_by), i), reverse=order_by == "desc")
            return ids

    def details(self, movie_id: int, with_images: bool, with_cast: bool) -> dict[str, Any]:
        """The movie_details movie, or the id-0 placeholder for an unknown id."""
        with self.lock:
            movie = self.movies.get(movie_id)
            if movie is None:
                return placeholder_movie()
            extra = self.extra[movie_id]
            keep = ("id", "url", "imdb_code", "title", "title_english", "title_long", "slug", "year", "rating",
                    "runtime", "genres")
            out: dict[str, Any] = {k: movie[k] for k in keep if k in movie}
            if extra["download_count"] is not None:  # before like_count: movie_details__yts-api-rs-basic.json
                out["download_count"] = extra["download_count"]
            out["like_count"] = extra["like_count"]
            out["description_intro"] = extra["description_intro"]
            for k in ("description_full", "yt_trailer_code", "language", "mpa_rating", "background_image",
                      "background_image_original", "small_cover_image", "medium_cover_image", "large_cover_image"):
                out[k] = movie.get(k)
            if with_images:
                base = movie["large_cover_image"].rsplit("/", 1)[0]
                for size in ("medium", "large"):
                    for n in (1, 2, 3):
                        out[f"{size}_screenshot_image{n}"] = f"{base}/{size}-screenshot{n}.jpg"
            if with_cast and extra["cast"]:
                out["cast"] = [dict(member) for member in extra["cast"]]
            out["torrents"] = [dict(t) for t in movie["torrents"]]
            out["date_uploaded"] = movie["date_uploaded"]
            out["date_uploaded_unix"] = movie["date_uploaded_unix"]
            return out

    def suggestions(self, movie_id: int) -> list[int]:
        """Four suggested ids for a movie (they may point at removed or unknown movies)."""
        with self.lock:
            if movie_id not in self.movies:
                return []
            rng = random.Random(f"{self.seed}:suggest:{movie_id}")
            pool = [i for i in self.order[:: max(1, len(self.order) // 200)] if i != movie_id]
            return rng.sample(pool, min(4, len(pool)))

    def suggestion_json(self, movie_id: int) -> dict[str, Any]:
        """A suggested movie as movie_suggestions shows it."""
        return suggestion_form(self.movies.get(movie_id) or self.removed[movie_id])


def _list_movie(rng: random.Random, movie_id: int, added: int, accented: str | None = None) -> dict[str, Any]:
    """A movie as list_movies shows it, without torrents yet (`accented`: a non-ASCII word for its title)."""
    title = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}" if rng.random() < 0.5 else \
        f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {movie_id}"
    if accented:  # "Crash Test Aglaé": list_movies__yts-api-rs-query_test.json
        title = f"{title} {accented}"
    year = rng.randint(1930, 2026)
    slug = f"{_slugify(title)}-{year}"
    folder = slug.replace("-", "_")
    words = rng.sample(WORDS, 6)
    description = (
        f"A {words[0]} and a {words[1]} set out on a {words[2]} to find the {words[3]} "
        f"behind the {words[4]} of {title}. Movie number {movie_id} of the {words[5]} collection."
    )
    rating = round(rng.uniform(1, 9.5), 1)
    genres = sorted(rng.sample(GENRES, rng.randint(1, 4)))
    images = f"https://{HOST}/assets/images/movies/{folder}"
    return {
        "id": movie_id,
        "url": f"https://{HOST}/movies/{slug}",
        "imdb_code": f"tt{1000000 + movie_id * 7:07d}",
        "title": title,
        "title_english": title,
        "title_long": f"{title} ({year})",
        "slug": slug,
        "year": year,
        # Whole ratings come as ints (list_movies__1eeyerin-netflix-app.json)
        "rating": int(rating) if rng.random() < 0.15 else rating,
        "runtime": rng.randint(70, 180),
        "genres": genres,
        "summary": description,
        "description_full": description,
        "synopsis": description,
        "yt_trailer_code": "" if rng.random() < 0.3 else _hash40("yt", movie_id)[:11],
        "language": rng.choice(LANGUAGES),
        "mpa_rating": rng.choice(MPA),
        "background_image": f"{images}/background.jpg",
        "background_image_original": f"{images}/background.jpg",
        "small_cover_image": f"{images}/small-cover.jpg",
        "medium_cover_image": f"{images}/medium-cover.jpg",
        "large_cover_image": f"{images}/large-cover.jpg",
        "state": "ok",
        "torrents": [],
        "date_uploaded": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(added)),
        "date_uploaded_unix": added,
    }


def _loosen(rng: random.Random, movie: dict[str, Any]) -> None:
    """Give a movie loose shapes: missing keys as in the samples, and numbers as strings besides."""
    if rng.random() < 0.03:
        del movie["genres"]  # list_movies__bbak0105-Clone_Movie_React.json
    if rng.random() < 0.05:
        del movie["title_english"]
    if rng.random() < 0.05:
        movie["runtime"] = str(movie["runtime"])
    if rng.random() < 0.02:
        movie["year"] = str(movie["year"])


def _older_shapes(shapes: random.Random, movie: dict[str, Any], extra: dict[str, Any], added: int) -> None:
    """Give some movies the shapes of other years: bare torrents, no rating yet, no download count."""
    if shapes.random() < 0.2:  # no is_repack, codec, bit depth or channels: list_movies__1eeyerin-netflix-app.json
        for torrent in movie["torrents"]:
            for key in ("is_repack", "video_codec", "bit_depth", "audio_channels"):
                torrent.pop(key, None)
    if shapes.random() < 0.03:
        movie["rating"] = 0  # a new movie not rated yet: list_movies__1eeyerin-netflix-app.json
    if shapes.random() < 0.01:
        movie["year"] = 0  # list_movies__bbak0105-Clone_Movie_React.json
    if shapes.random() < 0.3:
        extra["download_count"] = None  # not sent since 2026: movie_details__GabJS10-yts-movie-player.json
    for review in extra["reviews"]:
        written = added - shapes.randint(30, 7000) * 86400
        written -= written % 86400
        review["date_written"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(written))
        review["date_written_unix"] = written


def _details_extra(rng: random.Random, movie: Mapping[str, Any], added: int) -> dict[str, Any]:
    """What only movie_details and the per-movie endpoints show: counts, cast, reviews, guides, comments."""
    movie_id, description = movie["id"], movie["description_full"]
    cast = [
        {
            "name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            "character_name": rng.choice(WORDS).title(),
            "url_small_image": f"https://{HOST}/assets/images/actors/thumb/nm{movie_id:04d}{position}.jpg",
            "imdb_code": f"{movie_id * 10 + position:07d}",
        }
        for position in range(rng.randint(0, 4))
    ]
    for member in cast:
        if rng.random() < 0.2:
            del member["url_small_image"]  # movie_details__yts-api-rs-images-cast.json
    return {
        "like_count": rng.randint(0, 900),
        "download_count": rng.randint(0, 90000),
        "description_intro": description.split(".")[0] + ".",
        "cast": cast,
        "reviews": _reviews(rng, description),
        "parental_guides": [
            {"type": kind, "parental_guide_text": f"{kind.upper()} {rng.randint(1, 10)}/10\n\n{rng.choice(WORDS)}"}
            for kind in rng.sample(("Nudity", "Violence", "Profanity", "Alcohol", "Frightening"), rng.randint(0, 3))
        ],
        "comments": _comments(rng, movie_id, movie["date_uploaded"], added),
    }


def _reviews(rng: random.Random, description: str) -> list[dict[str, Any]]:
    """Up to three movie_reviews entries."""
    return [
        {
            "username": f"reviewer{rng.randint(1, 500)}",
            "user_rating": rng.randint(1, 10),
            "user_location": rng.choice(("United States", "France", "Japan", "Brazil", "")),
            "review_summary": f"{rng.choice(ADJECTIVES)} and {rng.choice(WORDS)}",
            "review_text": f"\n{description} I rated it for the {rng.choice(WORDS)}.\n",
        }
        for _ in range(rng.randint(0, 3))
    ]


def _comments(rng: random.Random, movie_id: int, date_added: str, added: int) -> list[dict[str, Any]]:
    """Up to two movie_comments entries."""
    return [
        {
            "comment_id": movie_id * 100 + n,
            "user_id": rng.randint(1, 99999),
            "username": f"user{rng.randint(1, 9999)}",
            "user_profile_url": f"https://{HOST}/user/u{n}",
            "small_user_avatar_image": f"https://{HOST}/assets/images/users/thumb/default_avatar.jpg",
            "medium_user_avatar_image": f"https://{HOST}/assets/images/users/default_avatar.jpg",
            "user_group": "user",
            "like_count": rng.randint(0, 20),
            "comment_text": f"thanks for the {rng.choice(WORDS)}",
            "date_added": date_added,
            "date_added_unix": added + n,
        }
        for n in range(rng.randint(0, 2))
    ]


def placeholder_movie() -> dict[str, Any]:
    """The status-ok placeholder movie_details returns for an unknown id."""
    # movie_details__GabJS10-yts-movie-player-not_found.json
    shots = {
        f"{size}_screenshot_image{n}": f"https://{HOST}/assets/images/movies//{size}-screenshot{n}.jpg"
        for size in ("medium", "large") for n in (1, 2, 3)
    }
    return {
        "id": 0, "url": f"https://{HOST}/movies/", "imdb_code": "tt", "title": None, "title_english": None,
        "title_long": " ()", "slug": None, "year": 0, "rating": 0, "runtime": 0, "genres": list(GENRES),
        "like_count": 0, "description_intro": None, "description_full": None, "yt_trailer_code": None,
        "language": None, "mpa_rating": None, **shots,
    }


# ---- faults ----------------------------------------------------------------------------------

def _seconds(value: str) -> float:
    """Parse the fault spec's timeout_s: how long a `timeout` fault stalls, 0 to 600 seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= 600:
        raise ValueError(f"fault spec: timeout_s needs seconds from 0 to 600, not {value!r}")
    return seconds

@dataclass
class FaultPlan:
    """Which faults to inject, parsed from a spec like "mix=0.1,dead=movie_reviews,retry_after=0"."""

    rates: dict[str, float] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    retry_after: str = "1"
    timeout_s: float = 5.0

    @classmethod
    def parse(cls, spec: str | None) -> "FaultPlan":
        """Parse a fault spec; raise ValueError with a readable message on bad input."""
        plan = cls()
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep:
                raise ValueError(f"fault spec item {item!r} is not KEY=VALUE")
            if key == "dead":
                unknown = [e for e in value.split("+") if e not in SIMULATED_ENDPOINTS]
                if unknown:
                    raise ValueError(f"fault spec: unknown endpoint {unknown[0]!r}")
                plan.dead.update(value.split("+"))
            elif key == "retry_after":
                plan.retry_after = value
            elif key == "timeout_s":
                plan.timeout_s = _seconds(value)
            elif key == "mix" or key in FAULT_KINDS + EXTRA_FAULT_KINDS:
                try:
                    rate = float(value)
                except ValueError:
                    raise ValueError(f"fault spec: {key} needs a probability, not {value!r}") from None
                if not 0 <= rate <= 1:
                    raise ValueError(f"fault spec: {key}={value} is not between 0 and 1")
                if key == "mix":
                    for kind in FAULT_KINDS:
                        plan.rates[kind] = plan.rates.get(kind, 0) + rate / len(FAULT_KINDS)
                else:
                    plan.rates[key] = plan.rates.get(key, 0) + rate
            else:
                kinds = ", ".join(("mix", *FAULT_KINDS, *EXTRA_FAULT_KINDS, "dead", "retry_after", "timeout_s"))
                raise ValueError(f"fault spec: unknown key {key!r}; known: {kinds}")
        total = sum(plan.rates.values())
        if total > 1 + 1e-9:
            raise ValueError(f"fault spec: the probabilities add up to {total:g}, more than 1")
        return plan

    def pick(self, rng: random.Random, endpoint: str) -> str | None:
        """Choose the fault for one request, or None."""
        if endpoint in self.dead:
            return "http503"
        roll = rng.random()
        for kind, rate in self.rates.items():
            if kind in LIST_FAULT_KINDS and endpoint != "list_movies":
                continue
            if roll < rate:
                return kind
            roll -= rate
        return None


class ServerLimiter:
    """The simulator's own rate limit: a token bucket that refuses instead of waiting."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate * 0.25)
        self.tokens = self.burst
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def allow(self) -> bool:
        """Take a token if one is left; False means answer 429."""
        if self.rate <= 0:
            return True
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


CHURN_MAX = 10_000  # movies added or removed at one time; more is not a crawl, it is a new catalog


@dataclass
class Churn:
    """Mutate the catalog every `every` list_movies requests."""

    every: int = 0
    add: int = 0
    remove: int = 0

    @classmethod
    def parse(cls, spec: str | None) -> "Churn":
        """Read an `every=N,add=A,remove=R` spec; ValueError if it is bad."""
        churn = cls()
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            key, _, value = item.partition("=")
            if key not in ("every", "add", "remove") or not (value.isascii() and value.isdigit()):
                raise ValueError(f"churn spec item {item!r}: use every=N,add=N,remove=N")
            setattr(churn, key, int(value))
        if (churn.add or churn.remove) and not churn.every:
            raise ValueError("churn spec: add and remove need every=N (N >= 1 list requests)")
        if max(churn.add, churn.remove) > CHURN_MAX:
            raise ValueError(f"churn spec: add and remove are at most {CHURN_MAX:,} movies a time")
        return churn


class FakeYTS:
    """The simulator: a catalog, a fault plan and counters, served over HTTP on loopback."""

    def __init__(self, catalog: Catalog, faults: FaultPlan | None = None, latency_ms: float = 0,
                 rate_limit: float = 0, churn: Churn | None = None, seed: int = 1):
        self.catalog = catalog
        self.faults = faults or FaultPlan()
        self.latency = latency_ms / 1000
        self.limiter = ServerLimiter(rate_limit)
        self.churn = churn or Churn()
        self.rng = random.Random(seed * 7919)
        self.rng_lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.ok_counts: dict[str, int] = {}
        self.faults_injected: dict[str, int] = {}
        self.fault_counts: dict[str, int] = {}  # per endpoint
        self.refused = 0
        self.list_requests = 0
        self.count_lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL it serves on, once started."""
        if self.server is None:
            raise RuntimeError("the simulator is not started")
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, port: int = 0, host: str = "127.0.0.1") -> "FakeYTS":
        """Serve in a background thread; port 0 picks a free port."""
        self.server = make_server(self, host, port)
        self.thread = threading.Thread(target=self.server.serve_forever, name="fakeapi", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down and close its socket."""
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> "FakeYTS":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _count(self, table: dict[str, int], key: str) -> None:
        with self.count_lock:
            table[key] = table.get(key, 0) + 1

    def stats(self) -> dict[str, Any]:
        """Requests and injected faults so far, by endpoint and kind."""
        with self.count_lock:
            return {
                "requests": dict(self.counts), "ok": dict(self.ok_counts), "faults": dict(self.faults_injected),
                "faulted": dict(self.fault_counts),
                "refused": self.refused, "movies": len(self.catalog.movies),
            }

    # ---- request handling ------------------------------------------------------------------

    def respond(self, endpoint: str, params: Mapping[str, str]) -> tuple[int, dict[str, str], bytes, str | None]:
        """Return (status, headers, body, fault) for one API request."""
        self._count(self.counts, endpoint)
        if not self.limiter.allow():
            with self.count_lock:
                self.refused += 1
            return 429, {"Content-Type": "text/plain; charset=utf-8", "Retry-After": "1"}, \
                RATE_LIMIT_BODY.encode(), "refused"
        if endpoint == "list_movies":
            self._maybe_churn()
        with self.rng_lock:
            fault = self.faults.pick(self.rng, endpoint)
        if fault in ("http503", "html200", "error", "429", "reset", "timeout"):
            self._count(self.faults_injected, fault)
            self._count(self.fault_counts, endpoint)
            return (*self._fault_response(fault), fault)
        body = self._ok_body(endpoint, params, fault)
        if fault == "truncated":
            self._count(self.faults_injected, fault)
            self._count(self.fault_counts, endpoint)
            with self.rng_lock:
                cut = self.rng.randint(1, max(1, len(body) - 2))
            return 200, {"Content-Type": "application/json"}, body[:cut], fault
        if fault == "stray":
            body = b"<br />\n<b>Notice</b>: Undefined index in <b>/var/www/api.php</b><br />\n" + body + b"\n<!-- cache -->"
        if fault:
            self._count(self.faults_injected, fault)
        if fault in (None, "stray", "badcount"):  # answers a client takes as they are
            self._count(self.ok_counts, endpoint)
        else:
            self._count(self.fault_counts, endpoint)
        return 200, {"Content-Type": "application/json"}, body, fault

    def _maybe_churn(self) -> None:
        if not self.churn.every:
            return
        with self.count_lock:
            self.list_requests += 1
            due = self.list_requests % self.churn.every == 0
        if due:
            self.catalog.mutate({"add": self.churn.add, "remove": self.churn.remove})

    def _fault_response(self, fault: str) -> tuple[int, dict[str, str], bytes]:
        html = {"Content-Type": "text/html; charset=UTF-8"}
        if fault == "http503":
            return 503, html, CLOUDFLARE_HTML.format(host=HOST, ray=_hash40(time.time())[:16].lower()).encode()
        if fault == "html200":
            return 200, html, MAINTENANCE_HTML.encode()
        if fault == "error":
            return 200, {"Content-Type": "application/json"}, \
                b'{"status":"error","status_message":"Database error, please try again","data":null}'
        if fault == "429":
            retry_after = self.faults.retry_after
            if retry_after == "date":
                retry_after = formatdate(time.time() + 1, usegmt=True)
            return 429, {"Content-Type": "text/plain; charset=utf-8", "Retry-After": retry_after}, \
                RATE_LIMIT_BODY.encode()
        if fault == "timeout":
            time.sleep(self.faults.timeout_s)
            return 504, html, b"<html><body>504 Gateway Time-out</body></html>"
        return 0, {}, b""  # reset: the handler drops the connection

    def _ok_body(self, endpoint: str, params: Mapping[str, str], fault: str | None = None) -> bytes:
        if endpoint == "list_movies":
            data = self._list_movies(params, fault)
        elif endpoint == "movie_details":
            movie_id = _int_param(params, "movie_id")
            movie = self.catalog.details(movie_id, _bool_param(params, "with_images"), _bool_param(params, "with_cast"))
            data = b'{"movie":' + json.dumps(movie, separators=(",", ":")).encode() + b"}"
        elif endpoint == "movie_suggestions":
            ids = self.catalog.suggestions(_int_param(params, "movie_id"))
            with self.catalog.lock:
                movies = [self.catalog.suggestion_json(i) for i in ids]
            # movie_count is 0 although movies are returned: movie_suggestions__GabJS10-yts-movie-player.json
            data = json.dumps({"movie_count": 0, "movies": movies}, separators=(",", ":")).encode()
        elif endpoint in ("movie_reviews", "movie_parental_guides", "movie_comments"):
            key = {"movie_reviews": "reviews", "movie_parental_guides": "parental_guides",
                   "movie_comments": "comments"}[endpoint]
            count_key = {"reviews": "review_count", "parental_guides": "parental_guide_count",
                         "comments": "comment_count"}[key]
            extra = self.catalog.extra.get(_int_param(params, "movie_id"))
            items = extra[key] if extra and _int_param(params, "movie_id") in self.catalog.movies else []
            data = json.dumps({count_key: len(items), key: items}, separators=(",", ":")).encode()
        else:  # list_upcoming
            with self.catalog.lock:
                newest = self.catalog.order[:4]
                upcoming = [
                    {"title": self.catalog.movies[i]["title"] + " II", "year": 2027,
                     "imdb_code": f"tt9{i:06d}", "medium_cover_image": self.catalog.movies[i]["medium_cover_image"],
                     "date_added": self.catalog.movies[i]["date_uploaded"],
                     "date_added_unix": self.catalog.movies[i]["date_uploaded_unix"]}
                    for i in newest
                ]
            data = json.dumps({"upcoming_movies_count": len(upcoming), "upcoming_movies": upcoming}).encode()
        meta = b'{"server_time":%d,"server_timezone":"UTC","api_version":2,"execution_time":"0 ms"}' % time.time()
        return b'{"status":"ok","status_message":"Query was successful","data":' + data + b',"@meta":' + meta + b"}"

    def _list_movies(self, params: Mapping[str, str], fault: str | None = None) -> bytes:
        """A list page, spoilt as `fault` says: empty, stale (another page's answer) or badcount."""
        limit = _int_param(params, "limit", 20)
        limit = min(50, max(1, limit))  # the reference's 1-50; what upstream does outside it is unrecorded
        page = max(1, _int_param(params, "page", 1))
        if fault == "stale":  # as from a cache that ignores the query string
            page = 2 if page == 1 else 1
        sort_by = params.get("sort_by", "date_added")
        sort_by = sort_by if sort_by in SORT_KEYS else "date_added"
        order_by = "asc" if params.get("order_by", "desc").lower() == "asc" else "desc"
        catalog = self.catalog
        with catalog.lock:
            ids = catalog.query(sort_by, order_by, params.get("quality"),
                                _to_float(params.get("minimum_rating", 0)), _query_term(params),
                                params.get("genre"))
            window = [] if fault == "empty" else ids[(page - 1) * limit: page * limit]
            movies = b",".join(catalog.encoded(i) for i in window)
        count = len(ids)
        if fault == "badcount":  # a count that ends the list at this page, or half the real one on the last
            count = page * limit if page * limit < count else count // 2
        head = b'{"movie_count":%d,"limit":%d,"page_number":%d' % (count, limit, page)
        if not window:
            return head + b"}"  # no "movies" key on an empty page: list_movies__yts-api-rs-empty.json
        return head + b',"movies":[' + movies + b"]}"


def _int_param(params: Mapping[str, str], name: str, default: int = 0) -> int:
    try:
        return int(params.get(name, default))
    except (TypeError, ValueError):
        return default


def _bool_param(params: Mapping[str, str], name: str) -> bool:
    return str(params.get(name, "")).lower() in ("1", "true", "yes")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cloudflare"
    wbufsize = 1 << 16  # one send per response: no Nagle / delayed-ACK stalls on keep-alive
    disable_nagle_algorithm = True
    sim: FakeYTS

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        pass

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path.rstrip("/")
        if path == "/_admin/stats":
            return self._send(200, {"Content-Type": "application/json"}, json.dumps(self.sim.stats()).encode())
        if path == "/_admin/dump":
            return self._send(200, {"Content-Type": "application/json"}, json.dumps(self.sim.catalog.dump()).encode())
        if path == "/_admin/catalog":
            return self._send(200, {"Content-Type": "application/json"}, json.dumps(self.sim.catalog.ids()).encode())
        folder, _, name = path.rpartition("/")
        endpoint = name.removesuffix(".json")
        if folder != "/api/v2" or endpoint not in SIMULATED_ENDPOINTS:
            return self._send(404, {"Content-Type": "text/html"}, b"<html><body>404 Not Found</body></html>")
        if self.sim.latency:
            time.sleep(self.sim.latency)
        status, headers, body, fault = self.sim.respond(endpoint, params)
        if fault == "reset":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        return self._send(status, headers, body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else b"{}"
        if urlsplit(self.path).path.rstrip("/") != "/_admin/mutate":
            return self._send(405, {"Content-Type": "text/plain"}, b"read-only")
        try:
            result = self.sim.catalog.mutate(json.loads(payload or b"{}"))
        except (ValueError, TypeError, KeyError) as error:
            return self._send(400, {"Content-Type": "text/plain"}, str(error).encode())
        return self._send(200, {"Content-Type": "application/json"}, json.dumps(result).encode())

    def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        try:
            self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that vanish mid-response (killed crawlers) are normal here."""


def make_server(sim: FakeYTS, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Bind an HTTP server for `sim` (not started)."""
    handler = type("Handler", (_Handler,), {"sim": sim})
    return _Server((host, port), handler)
