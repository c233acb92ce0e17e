"""Unit tests of the pure transform functions: loose types, magnets, no mutation."""

from __future__ import annotations

import copy
import json
from urllib.parse import quote_plus

import pytest

from mirror import transform


@pytest.mark.parametrize("value, expected", [
    ("0", 0), ("1", 1), ("", None), (None, None), (8, 8), ("8", 8), (7.0, 7), ("7.9", 7), ("x", None), (True, 1),
    ("inf", None), ("1e999", None), ("nan", None), (float("inf"), None), (float("-inf"), None), (float("nan"), None),
    ("9" * 5000, None), ("9" * 19, None), ("9" * 18, 999_999_999_999_999_999),
    (" 12 ", 12), ("1_000", None), ("\u0663", None), ("\uff18", None),  # float() takes these three
])
def test_to_int(value: object, expected: int | None) -> None:
    assert transform.to_int(value) == expected


@pytest.mark.parametrize("value, expected", [(7, 7.0), (6.3, 6.3), ("5.5", 5.5), ("", None), (None, None),
                                             ("inf", None), (float("nan"), None), (float("-inf"), None)])
def test_to_float(value: object, expected: float | None) -> None:
    assert transform.to_float(value) == expected


def test_non_finite_numbers_become_null() -> None:
    # Python's json (the fallback decoder) accepts NaN and Infinity, which orjson refuses
    movie = json.loads('{"id": 5, "year": Infinity, "runtime": -Infinity, "rating": NaN, "torrents": '
                       '[{"hash": "ab", "seeds": NaN, "size_bytes": 1e999}]}')
    rows = transform.page_rows([movie])
    assert (rows.movies[5]["year"], rows.movies[5]["runtime"], rows.movies[5]["rating"]) == (None, None, None)
    assert (rows.torrents[0]["seeds"], rows.torrents[0]["size_bytes"]) == (None, None)


MOVIE = {
    "id": "42", "title": "Crème & <Brûlée>", "title_long": "Crème & <Brûlée> (2001)", "year": "2001",
    "rating": 7, "runtime": "95", "genres": ["Drama", "Drama", "Comedy"],
    "torrents": [
        {"hash": "abcdef0123456789abcdef0123456789abcdef01", "quality": "720p", "is_repack": "",
         "bit_depth": "8", "seeds": "12", "peers": 3, "size_bytes": "1000"},
        {"hash": "ABCDEF0123456789ABCDEF0123456789ABCDEF01", "quality": "720p", "is_repack": "1"},
    ],
}


def test_movie_row_coerces_and_keeps_raw() -> None:
    frozen = copy.deepcopy(MOVIE)
    row = transform.movie_row(MOVIE)
    assert MOVIE == frozen
    assert (row["id"], row["year"], row["runtime"], row["rating"]) == (42, 2001, 95, 7.0)
    assert row["title_english"] is None  # missing key
    assert json.loads(row["genres"]) == ["Drama", "Comedy"]
    assert json.loads(row["raw"]) == MOVIE


def test_raw_json_is_compact_and_survives_huge_integers() -> None:
    assert transform.dumps({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'
    assert json.loads(transform.dumps({"n": 2**70})) == {"n": 2**70}  # beyond orjson's 64 bits


def test_torrent_rows_upper_case_and_deduplicate() -> None:
    frozen = copy.deepcopy(MOVIE)
    rows = transform.torrent_rows(MOVIE)
    assert MOVIE == frozen
    assert len(rows) == 1
    row = rows[0]
    assert row["hash"] == "ABCDEF0123456789ABCDEF0123456789ABCDEF01"
    assert row["movie_id"] == 42 and row["is_repack"] == 1  # the later duplicate wins


@pytest.mark.parametrize("name", ["Up (2009)", "Plain Name 2009", "a_b.c~d-e f", "Wall-E", "", " ", "x\n",
                                  "Amélie", "50/50", "C++ & Co", "100% Rock", "Who?", "a+b", "é\u00a0"])
def test_quote_name_is_quote_plus(name: str) -> None:
    assert transform.quote_name(name) == quote_plus(name)
    for code in range(128):
        assert transform.quote_name(name + chr(code)) == quote_plus(name + chr(code))


def test_magnets_follow_the_docs() -> None:
    movie = {"id": 1, "title_long": "Crème & Brûlée (2001)", "torrents": [{"hash": "abc"}]}
    [row] = transform.torrent_rows(movie, ["udp://open.demonii.com:1337", "http://t.example/announce"])
    assert row["magnet"] == ("magnet:?xt=urn:btih:ABC&dn=Cr%C3%A8me+%26+Br%C3%BBl%C3%A9e+%282001%29"
                             "&tr=udp://open.demonii.com:1337&tr=http://t.example/announce")


def test_list_hash_ignores_swarm_counts_but_not_new_torrents() -> None:
    base = transform.list_hash(transform.dumps(MOVIE))
    reseeded = copy.deepcopy(MOVIE)
    reseeded["torrents"][0]["seeds"] = 999
    assert transform.list_hash(transform.dumps(reseeded)) == base
    grown = copy.deepcopy(MOVIE)
    grown["torrents"].append({"hash": "FF" * 20, "quality": "1080p"})
    assert transform.list_hash(transform.dumps(grown)) != base


def test_torrents_without_a_hash_are_dropped() -> None:
    movie = {"id": 5, "title": "Bare", "torrents": [{"hash": " "}, {"hash": None}, {}, "junk", {"hash": " ab "}]}
    assert [row["hash"] for row in transform.torrent_rows(movie)] == ["AB"]


def test_missing_genres_and_torrents() -> None:
    movie = {"id": 5, "title": "Bare"}
    assert transform.genre_rows(movie) == []
    assert transform.torrent_rows(movie) == []
    assert json.loads(transform.movie_row(movie)["genres"]) == []


def test_list_page_movies_skips_junk() -> None:
    assert transform.list_page_movies({"movie_count": 3}) == []
    assert transform.list_page_movies(None) == []
    assert transform.list_page_movies({"movies": [{"id": 0}, "x", {"id": 3}]}) == [{"id": 3}]


def test_found_details_tells_a_movie_from_not_found() -> None:
    movie = {"id": "15", "title": "16 Blocks"}
    assert transform.found_details({"movie": movie}, 15) is movie  # loose id types still match
    assert transform.found_details({"movie": movie}, 16) is None  # another movie than asked for
    assert transform.found_details({"movie": {"id": 0, "title": None}}, 15) is None  # the placeholder
    assert transform.found_details(None, 15) is None


def test_details_row_from_2015_images_block() -> None:
    movie = {"id": 9, "images": {"large_screenshot_image1": "http://x/1.jpg"}, "like_count": "4",
             "actors": [{"name": "A B", "character_name": "C"}]}
    row = transform.details_row(movie)
    assert row["large_screenshot_image1"] == "http://x/1.jpg"
    assert row["like_count"] == 4 and row["cast_names"] == "A B"


def test_config_example_documents_the_defaults() -> None:
    from pathlib import Path

    from mirror.config import Config, load_config

    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    assert load_config(example) == Config()


def test_integers_beyond_sqlite_become_none() -> None:
    huge = 2**63
    assert transform.to_int(huge) is None and transform.to_int(str(huge)) is None
    assert transform.to_int(huge - 1) == huge - 1
    row = transform.movie_row({"id": 7, "year": huge, "runtime": -huge - 1, "date_uploaded_unix": "12"})
    assert (row["year"], row["runtime"], row["date_uploaded_unix"]) == (None, None, 12)
    assert str(huge) in row["raw"]  # the raw JSON keeps what was sent
    assert transform.list_page_movies({"movies": [{"id": huge}, {"id": 3}]}) == [{"id": 3}]


@pytest.mark.parametrize("value, expected", [
    (8, 8), ("8", 8), (" 8 ", 8), (8.0, 8), (True, None), (False, None), (1.5, None), (0, None), (-3, None),
    ("0", None), ("x", None), (None, None), (2**63, None), ("9" * 5000, None), ("1e3", None), ([8], None),
])
def test_to_id_takes_only_positive_whole_numbers(value: object, expected: int | None) -> None:
    assert transform.to_id(value) == expected


@pytest.mark.parametrize("genres, expected", [
    (["Drama", "Drama", " Comedy "], ["Drama", "Comedy"]), ("Drama", ["Drama"]), (5, []), ({"a": 1}, []),
    ([1, None, "War"], ["War"]), (None, []),
])
def test_genres_of_odd_shapes(genres: object, expected: list[str]) -> None:
    assert transform.genres_of({"genres": genres}) == expected


def test_a_movie_without_a_usable_id_still_fills_its_place_on_the_page() -> None:
    data = {"movie_count": 3, "movies": [{"id": 1}, {"id": True}, {"id": "x"}]}
    assert transform.listed_count(data) == 3 and [m["id"] for m in transform.list_page_movies(data)] == [1]


def test_page_values_are_the_rows_in_column_order() -> None:
    rows = transform.page_rows([MOVIE])
    values = transform.page_values(rows)
    [movie] = rows.movies.values()
    assert values.movies == {42: tuple(movie[c] for c in transform.MOVIE_COLUMNS)}
    assert values.movies[42][transform.LIST_HASH_AT] == movie["list_hash"]
    assert values.genres == {42: [(42, "Drama"), (42, "Comedy")]}
    assert values.torrents == [tuple(t[c] for c in transform.TORRENT_COLUMNS) for t in rows.torrents]
    assert [t[transform.HASH_AT] for t in values.torrents] == ["ABCDEF0123456789ABCDEF0123456789ABCDEF01"]


def test_a_movie_with_no_usable_id_makes_no_rows() -> None:
    rows = transform.page_rows([{"id": None, "title": "No id", "torrents": [{"hash": "ab" * 20}]},
                                {"id": "x", "title": "Bad id"}, {"id": 3, "title": "Three", "genres": ["Drama"]}])
    assert list(rows.movies) == [3] and list(rows.genres) == [3] and rows.torrents == []
