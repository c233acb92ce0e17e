"""The YTS-compatible API (issue 6): envelope, endpoints, edge behaviour, safety, removed movies.

One mirror is synced (with enrichment) from the simulator for the module, then a few movies are
removed upstream and a full sync marks them removed. Requests go through Datasette's test client.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from datasette.app import Datasette

from conftest import SAMPLES
from mirror.cli import cli
from mirror.fakeapi import Catalog, FakeYTS

MOVIES, SEED = 400, 11
API = "/api/v2"


@dataclass
class Mirror:
    """A synced mirror, the catalog it came from and a Datasette serving it."""

    path: Path
    catalog: Catalog
    removed: list[int]
    suggester: int  # a present movie whose first suggestion was removed
    suggestions: dict[int, list[int]]  # as the mirror fetched them (before the removals)
    datasette: Datasette

    def get(self, path: str) -> httpx.Response:
        return fetch(self.datasette, path)

    def ok(self, path: str) -> dict[str, Any]:
        """GET a JSON endpoint that must succeed; return its `data`."""
        response = self.get(path)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "ok", (path, response.status_code, body)
        return body["data"]

    def error(self, path: str, http_status: int) -> str:
        """GET a JSON endpoint that must fail cleanly; return its status_message."""
        response = self.get(path)
        assert response.status_code == http_status, (path, response.status_code, response.text[:300])
        body = response.json()
        assert body["status"] == "error" and body["data"] is None, body
        assert set(body) == {"status", "status_message", "data", "@meta"}
        return body["status_message"]


def fetch(datasette: Datasette, path: str, method: str = "GET") -> httpx.Response:
    """One request through Datasette's in-process test client."""
    return asyncio.run(datasette.client.request(method, path))


def sync(path: Path, url: str, *extra: str) -> None:
    """`yts-mirror sync` against the simulator, failing the test on a non-zero exit."""
    result = CliRunner().invoke(cli, ["-q", "sync", "--db", str(path), "--base-url", url, "--rate", "0",
                                      "--concurrency", "4", *extra])
    if result.exit_code != 0:
        raise RuntimeError(f"sync failed ({result.exit_code}): {result.output} {result.exception!r}")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    path = tmp_path_factory.mktemp("api") / "mirror.db"
    catalog = Catalog(MOVIES, SEED)
    with FakeYTS(catalog) as sim:
        sync(path, sim.url)
        suggestions = {movie_id: catalog.suggestions(movie_id) for movie_id in catalog.ids()}
        suggester = catalog.ids()[10]
        removed = [suggestions[suggester][0], catalog.ids()[3], catalog.ids()[-2]]
        catalog.remove(ids=removed)
        sync(path, sim.url, "--full")
    return Mirror(path, catalog, removed, suggester, suggestions, Datasette([str(path)]))


def all_ids(mirror: Mirror, query: str = "") -> list[int]:
    """Every id list_movies returns for a query, page by page."""
    ids, page = [], 1
    while True:
        data = mirror.ok(f"{API}/list_movies.json?limit=50&page={page}{query}")
        if "movies" not in data:
            return ids
        ids += [movie["id"] for movie in data["movies"]]
        page += 1


# ---- the envelope and list_movies -------------------------------------------------------------

def test_list_movies_envelope_and_movies_as_upstream(mirror: Mirror) -> None:
    response = mirror.get(f"{API}/list_movies.json")
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert list(body) == ["status", "status_message", "data", "@meta"]
    assert body["status"] == "ok" and body["status_message"] == "Query was successful"
    assert set(body["@meta"]) == {"server_time", "server_timezone", "api_version", "execution_time"}
    assert body["@meta"]["api_version"] == 2 and isinstance(body["@meta"]["server_time"], int)
    data = body["data"]
    assert list(data) == ["movie_count", "limit", "page_number", "movies"]
    assert (data["movie_count"], data["limit"], data["page_number"]) == (MOVIES - 3, 20, 1)
    assert [m["id"] for m in data["movies"]] == mirror.catalog.ids()[:20]
    for movie in data["movies"]:  # the list JSON as upstream sent it, key order and loose types included
        assert json.dumps(movie) == json.dumps(mirror.catalog.movies[movie["id"]])


@pytest.mark.parametrize(("limit", "expected"), [
    ("", 20), ("1", 1), ("50", 50), ("0", 1), ("-7", 1), ("51", 50), ("100000", 50), (" 12 ", 12)])
def test_limit_is_clamped_to_1_50_default_20(mirror: Mirror, limit: str, expected: int) -> None:
    data = mirror.ok(f"{API}/list_movies.json?limit={limit}")
    assert data["limit"] == expected and len(data["movies"]) == expected


def test_empty_page_has_no_movies_key(mirror: Mirror) -> None:
    data = mirror.ok(f"{API}/list_movies.json?page=1000")
    assert data == {"movie_count": MOVIES - 3, "limit": 20, "page_number": 1000}
    data = mirror.ok(f"{API}/list_movies.json?query_term=no+such+movie+anywhere")
    assert data == {"movie_count": 0, "limit": 20, "page_number": 1}


def test_page_zero_or_negative_is_page_one(mirror: Mirror) -> None:
    first = mirror.ok(f"{API}/list_movies.json?limit=5")
    for page in ("0", "-3"):
        data = mirror.ok(f"{API}/list_movies.json?limit=5&page={page}")
        assert data["page_number"] == 1 and data["movies"] == first["movies"]


def test_path_without_extension_answers_json(mirror: Mirror) -> None:
    assert mirror.ok(f"{API}/list_movies?limit=2")["limit"] == 2


def test_with_rt_ratings_is_accepted(mirror: Mirror) -> None:
    plain = mirror.ok(f"{API}/list_movies.json?limit=3")
    assert mirror.ok(f"{API}/list_movies.json?limit=3&with_rt_ratings=true") == plain


def test_seeds_and_peers_are_current(tmp_path: Path, mirror: Mirror) -> None:
    """Movies are rebuilt from raw JSON with the torrents table's swarm counts, and a write shows at once."""
    path = tmp_path / "copy.db"
    shutil.copy(mirror.path, path)
    datasette = Datasette([str(path)])
    first = json.loads(fetch(datasette, f"{API}/list_movies.json?limit=1").text)["data"]["movies"][0]
    torrent = first["torrents"][0]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE torrents SET seeds = 4242, peers = 4343 WHERE hash = ?", [torrent["hash"].upper()])
    again = json.loads(fetch(datasette, f"{API}/list_movies.json?limit=1").text)["data"]["movies"][0]
    assert (again["torrents"][0]["seeds"], again["torrents"][0]["peers"]) == (4242, 4343)
    assert {k: v for k, v in again.items() if k != "torrents"} == {k: v for k, v in first.items() if k != "torrents"}
    top = json.loads(fetch(datasette, f"{API}/list_movies.json?sort_by=seeds&limit=1").text)["data"]["movies"][0]
    assert top["id"] == first["id"]


# ---- JSONP and XML ------------------------------------------------------------------------------

def test_jsonp_wraps_the_same_envelope(mirror: Mirror) -> None:
    response = mirror.get(f"{API}/list_movies.jsonp?limit=2&callback=app.onMovies")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/javascript; charset=utf-8"
    text = response.text
    assert text.startswith("/**/app.onMovies(") and text.endswith(");")
    body = json.loads(text[len("/**/app.onMovies("):-2])
    assert body["data"] == mirror.ok(f"{API}/list_movies.json?limit=2")


def test_jsonp_errors_still_reach_the_callback(mirror: Mirror) -> None:
    response = mirror.get(f"{API}/movie_details.jsonp?movie_id=99999999&callback=cb")
    assert response.status_code == 200 and response.text.startswith("/**/cb(")
    assert json.loads(response.text[len("/**/cb("):-2])["status"] == "error"


def test_json_honours_a_callback_too(mirror: Mirror) -> None:
    assert mirror.get(f"{API}/list_movies.json?limit=1&callback=cb").text.startswith("/**/cb(")


@pytest.mark.parametrize("callback", [
    "alert(1)", "a%20b", "1abc", "%3Cscript%3E", "cb;alert(1)", "a..b", "x" * 100, "a.b.", "%E2%80%A8"])
def test_bad_callback_is_a_clean_json_error(mirror: Mirror, callback: str) -> None:
    message = mirror.error(f"{API}/list_movies.jsonp?callback={callback}", 400)
    assert "callback" in message
    assert "<script>" not in mirror.get(f"{API}/list_movies.jsonp?callback={callback}").text


def test_jsonp_needs_a_callback(mirror: Mirror) -> None:
    assert "callback is required" in mirror.error(f"{API}/list_movies.jsonp", 400)


def test_xml(mirror: Mirror) -> None:
    response = mirror.get(f"{API}/list_movies.xml?limit=2")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "xml" and root.findtext("status") == "ok"
    assert root.findtext("data/movie_count") == str(MOVIES - 3)
    movies = root.findall("data/movies/movie")
    assert len(movies) == 2 and movies[0].findtext("id") == str(mirror.catalog.ids()[0])
    assert movies[0].findall("torrents/torrent") and movies[0].find("genres/genre") is not None
    error = ET.fromstring(mirror.get(f"{API}/movie_details.xml?movie_id=abc").content)
    assert error.findtext("status") == "error" and "movie_id" in error.findtext("status_message")


def test_unknown_format_and_endpoint(mirror: Mirror) -> None:
    assert "format" in mirror.error(f"{API}/list_movies.html", 404)
    assert "unknown endpoint" in mirror.error(f"{API}/list_everything.json", 404)


# ---- the per-movie endpoints --------------------------------------------------------------------

@pytest.mark.parametrize("flags", ["", "&with_images=true", "&with_cast=1", "&with_images=true&with_cast=true"])
def test_movie_details_match_upstream(mirror: Mirror, flags: str) -> None:
    movie_id = mirror.catalog.ids()[5]
    data = mirror.ok(f"{API}/movie_details.json?movie_id={movie_id}{flags}")
    assert list(data) == ["movie"]
    expected = mirror.catalog.details(movie_id, "with_images" in flags, "with_cast" in flags)
    assert data["movie"] == expected


def test_movie_details_keys_come_in_the_real_api_order(mirror: Mirror) -> None:
    sample = json.loads((SAMPLES / "movie_details__yts-api-rs-images-cast.json").read_text())["data"]["movie"]
    movie_id = next(i for i in mirror.catalog.ids() if mirror.catalog.extra[i]["download_count"] is not None)
    ours = mirror.ok(f"{API}/movie_details.json?movie_id={movie_id}&with_images=1&with_cast=1")["movie"]
    simulated = mirror.catalog.details(movie_id, True, True)
    assert {"download_count", "like_count", "cast", "large_screenshot_image3"} <= set(ours) == set(simulated)
    for keys in (list(ours), list(simulated)):
        assert [key for key in keys if key in sample] == [key for key in sample if key in keys]


def test_movie_details_by_imdb_id(mirror: Mirror) -> None:
    movie_id = mirror.catalog.ids()[7]
    code = mirror.catalog.movies[movie_id]["imdb_code"]
    by_id = mirror.ok(f"{API}/movie_details.json?movie_id={movie_id}&with_cast=1")
    assert mirror.ok(f"{API}/movie_details.json?imdb_id={code}&with_cast=1") == by_id
    assert mirror.ok(f"{API}/movie_details.json?imdb_id={code.upper()}&with_cast=1") == by_id
    assert "is not in this mirror" in mirror.error(f"{API}/movie_details.json?imdb_id=tt0000001", 404)
    assert "imdb_id" in mirror.error(f"{API}/movie_details.json?imdb_id=nm123", 400)


def test_unknown_movie_is_a_clear_error_not_a_placeholder(mirror: Mirror) -> None:
    for endpoint in ("movie_details", "movie_suggestions", "movie_reviews", "movie_parental_guides",
                     "movie_comments"):
        message = mirror.error(f"{API}/{endpoint}.json?movie_id=99999999", 404)
        assert message == "movie_id 99999999 is not in this mirror"
    assert "movie_id is required" in mirror.error(f"{API}/movie_reviews.json", 400)
    assert "movie_id or imdb_id is required" in mirror.error(f"{API}/movie_details.json", 400)


def test_suggestions_are_the_stored_movies_in_order(mirror: Mirror) -> None:
    movie_id = mirror.catalog.ids()[20]
    data = mirror.ok(f"{API}/movie_suggestions.json?movie_id={movie_id}")
    expected = [i for i in mirror.suggestions[movie_id] if i not in mirror.removed]
    assert list(data) == ["movie_count", "movies"] and data["movie_count"] == len(expected)
    assert data["movies"] == [mirror.catalog.suggestion_json(i) for i in expected]


def test_removed_suggestions_are_hidden_unless_asked(mirror: Mirror) -> None:
    url = f"{API}/movie_suggestions.json?movie_id={mirror.suggester}"
    suggested = mirror.suggestions[mirror.suggester]
    assert [m["id"] for m in mirror.ok(url)["movies"]] == suggested[1:]
    assert [m["id"] for m in mirror.ok(url + "&include_removed=1")["movies"]] == suggested


@pytest.mark.parametrize(("endpoint", "count_key", "list_key"), [
    ("movie_reviews", "review_count", "reviews"),
    ("movie_parental_guides", "parental_guide_count", "parental_guides"),
])
def test_reviews_and_parental_guides(mirror: Mirror, endpoint: str, count_key: str, list_key: str) -> None:
    for movie_id in mirror.catalog.ids()[:30]:
        data = mirror.ok(f"{API}/{endpoint}.json?movie_id={movie_id}")
        expected = mirror.catalog.extra[movie_id][list_key]
        assert data == {count_key: len(expected), list_key: expected}


def test_comments_not_mirrored_by_default_say_so(mirror: Mirror) -> None:
    movie_id = mirror.catalog.ids()[0]
    assert "not in this mirror yet" in mirror.error(f"{API}/movie_comments.json?movie_id={movie_id}", 404)


def test_list_upcoming_is_not_mirrored(mirror: Mirror) -> None:
    assert "list_upcoming is not mirrored" in mirror.error(f"{API}/list_upcoming.json", 404)


# ---- removed movies -----------------------------------------------------------------------------

def test_removed_movies_hidden_unless_include_removed(mirror: Mirror) -> None:
    listed = all_ids(mirror)
    assert listed == mirror.catalog.ids() and not set(listed) & set(mirror.removed)
    everything = all_ids(mirror, "&include_removed=1")
    assert sorted(everything, reverse=True) == everything and set(everything) == set(listed) | set(mirror.removed)
    assert mirror.ok(f"{API}/list_movies.json?include_removed=1")["movie_count"] == MOVIES
    gone = mirror.removed[1]
    assert "include_removed=1" in mirror.error(f"{API}/movie_details.json?movie_id={gone}", 404)
    assert mirror.ok(f"{API}/movie_details.json?movie_id={gone}&include_removed=1")["movie"]["id"] == gone
    assert "include_removed=1" in mirror.error(f"{API}/movie_reviews.json?movie_id={gone}", 404)


# ---- read-only ----------------------------------------------------------------------------------

def table_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}


@pytest.mark.parametrize("endpoint", [
    "list_movies", "movie_details", "make_comment", "like_movie", "user_get_key", "add_movie_bookmark",
    "delete_comment", "make_request", "user_register"])
def test_post_is_refused_with_405_and_writes_nothing(mirror: Mirror, endpoint: str) -> None:
    before = table_counts(mirror.path)
    response = fetch(mirror.datasette, f"{API}/{endpoint}.json?movie_id=1&comment_text=hi", "POST")
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
    body = response.json()
    assert body["status"] == "error" and body["status_message"].startswith("read-only mirror")
    assert table_counts(mirror.path) == before


@pytest.mark.parametrize("endpoint", ["like_movie", "make_comment", "user_get_key", "report_comment"])
def test_write_endpoints_refuse_get_too(mirror: Mirror, endpoint: str) -> None:
    assert mirror.error(f"{API}/{endpoint}.json?movie_id=1", 405).startswith("read-only mirror")


@pytest.mark.parametrize("endpoint", ["user_details", "user_profile", "get_movie_bookmarks"])
def test_user_endpoints_are_not_mirrored(mirror: Mirror, endpoint: str) -> None:
    assert mirror.error(f"{API}/{endpoint}.json?user_id=16", 404).startswith("read-only mirror")


# ---- bad parameters never cause a 500 -----------------------------------------------------------

@pytest.mark.parametrize("query", [
    "movie_details.json?movie_id=abc", "movie_details.json?movie_id=-1", "movie_details.json?movie_id=1.5",
    "movie_details.json?movie_id=1;DROP%20TABLE%20movies", "movie_details.json?movie_id=99999999999999999999999",
    "movie_reviews.json?movie_id=0x10", "movie_suggestions.json?movie_id=%00",
    "list_movies.json?limit=abc", "list_movies.json?page=1e3", "list_movies.json?page=99999999999",
    "list_movies.json?page=NaN", "list_movies.json?minimum_rating=inf", "list_movies.json?minimum_rating=7%27",
    "list_movies.json?limit=" + "9" * 60,
])
def test_bad_parameters_get_a_clean_400(mirror: Mirror, query: str) -> None:
    mirror.error(f"{API}/{query}", 400)


NO_FILTER = ["sort_by=title%3B%20DROP%20TABLE%20movies", "order_by=asc%3B%20DELETE%20FROM%20movies", "quality=",
             "minimum_rating=", "sort_by="]  # ignored (an unknown sort key) or blank: every present movie


@pytest.mark.parametrize("query", [
    "query_term=%27%20OR%201%3D1%20--", "query_term=%22%29%20UNION%20SELECT%20raw%20FROM%20movies--",
    "genre=Drama%27%20--", "quality=1080p%27%20OR%20%271%27%3D%271", "query_term=%25", "query_term=_",
    "query_term=%ff%fe%00", "query_term=" + "x" * 5000, "genre=%E2%80%AE", *NO_FILTER,
])
def test_sql_looking_strings_are_just_strings(mirror: Mirror, query: str) -> None:
    before = table_counts(mirror.path)
    data = mirror.ok(f"{API}/list_movies.json?{query}")
    assert data["movie_count"] == (MOVIES - 3 if query in NO_FILTER else 0)  # three movies are removed upstream
    assert table_counts(mirror.path) == before


def test_hundreds_of_odd_requests_never_500(mirror: Mirror) -> None:
    values = ["", "0", "-1", "1", "abc", "%00", "%27", "1e9", "99999999999999999999", "true", "%ff", "tt", "nm1"]
    names = ["movie_id", "imdb_id", "limit", "page", "minimum_rating", "callback", "with_images", "sort_by"]
    endpoints = ["list_movies.json", "movie_details.json", "movie_suggestions.jsonp", "movie_reviews.xml",
                 "list_upcoming.json", "nope.json"]
    statuses = set()
    for endpoint, name, value in ((e, n, v) for e in endpoints for n in names for v in values):
        response = mirror.get(f"{API}/{endpoint}?{name}={value}")
        statuses.add(response.status_code)
        assert response.status_code in (200, 400, 404), (endpoint, name, value, response.text[:200])
    assert statuses >= {200, 400, 404}


# ---- both ways in: the anonymous fast lane and Datasette's route --------------------------------

def test_requests_with_cookies_or_auth_take_the_route_and_answer_the_same(mirror: Mirror) -> None:
    url = f"{API}/list_movies.json?limit=3&sort_by=rating"
    anonymous = mirror.get(url)
    for headers in ({"Cookie": "ds_actor=nobody"}, {"Authorization": "Bearer x"}):
        routed = asyncio.run(mirror.datasette.client.get(url, headers=headers))
        assert routed.status_code == 200 and "vary" in routed.headers
        assert routed.json()["data"] == anonymous.json()["data"]
    assert anonymous.headers["vary"] == "Cookie, Authorization"


def test_datasette_permissions_apply_to_the_api(mirror: Mirror) -> None:
    name = mirror.path.stem
    locked = Datasette([str(mirror.path)], metadata={"databases": {name: {"allow": False}}})
    for headers in ({}, {"Cookie": "x=1"}):
        response = asyncio.run(locked.client.get(f"{API}/list_movies.json", headers=headers))
        assert response.status_code == 403 and response.json()["status"] == "error"


def test_base_url_prefix(mirror: Mirror) -> None:
    prefixed = Datasette([str(mirror.path)], settings={"base_url": "/yts/"})
    response = asyncio.run(prefixed.client.get(f"{API}/list_movies.json?limit=2"))  # the client adds /yts
    assert str(response.url).startswith("http://localhost/yts/api/v2/")
    assert response.status_code == 200 and len(response.json()["data"]["movies"]) == 2
    routed = asyncio.run(prefixed.client.get(f"{API}/list_movies.json?limit=2", headers={"Cookie": "x=1"}))
    assert routed.status_code == 200 and routed.json()["data"] == response.json()["data"]
    post = asyncio.run(prefixed.client.post(f"{API}/list_movies.json"))
    assert post.status_code == 405


def test_cached_answers_follow_every_commit(tmp_path: Path, mirror: Mirror) -> None:
    """Answers are cached, but a commit (even of the same size, right after a WAL reset) is seen at once."""
    path = tmp_path / "copy.db"
    shutil.copy(mirror.path, path)
    datasette = Datasette([str(path)])
    url = f"{API}/list_movies.json?limit=1"
    first = json.loads(fetch(datasette, url).text)["data"]["movies"][0]
    hash_ = first["torrents"][0]["hash"].upper()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    try:
        for seeds in range(1000, 1030):
            conn.execute("UPDATE torrents SET seeds = ? WHERE hash = ?", [seeds, hash_])
            movie = json.loads(fetch(datasette, url).text)["data"]["movies"][0]
            assert movie["torrents"][0]["seeds"] == seeds
            if seeds % 3 == 0:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def posix_locks_of_this_process() -> int:
    """How many POSIX (fcntl) locks this process holds, from /proc/locks."""
    pid = str(os.getpid())
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if line.split()[1:2] == ["POSIX"] and line.split()[4:5] == [pid])


def test_answering_never_drops_sqlite_locks(mirror: Mirror) -> None:
    reader = sqlite3.connect(mirror.path)  # like one of Datasette's connections, in a read
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM movies").fetchone()
    try:
        held = posix_locks_of_this_process()
        assert held > 0
        mirror.ok("/api/v2/list_movies.json?limit=3&sort_by=rating")
        # Closing a descriptor of the file would drop them all, and a writer could reset the WAL under us.
        assert posix_locks_of_this_process() >= held
    finally:
        reader.rollback()
        reader.close()
