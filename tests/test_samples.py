"""Every recorded real response parses; modern ones become rows whose values match the JSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from conftest import SAMPLES
from mirror import transform
from mirror.client import describe_bad_body, extract_json

JSON_SAMPLES = sorted(SAMPLES.glob("*.json"))
MODERN_LISTS = [p for p in JSON_SAMPLES if p.name.startswith("list_movies__") and "2015" not in p.name]


def load(path: Path) -> object:
    return extract_json(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", JSON_SAMPLES, ids=lambda p: p.name)
def test_every_json_sample_parses_and_transforms_without_error(path: Path) -> None:
    envelope = load(path)
    frozen = copy.deepcopy(envelope)
    data = envelope.get("data") if isinstance(envelope, dict) else None
    for movie in transform.list_page_movies(data):
        transform.movie_row(movie)
        transform.torrent_rows(movie)
        transform.genre_rows(movie)
    movie = transform.details_movie(data)
    if movie and not transform.is_placeholder(movie):
        transform.details_row(movie)
        transform.cast_rows(movie)
    transform.suggestion_rows(1, data)
    transform.review_rows(1, data)
    transform.parental_guide_rows(1, data)
    transform.comment_rows(1, data)
    assert envelope == frozen, "a transform mutated its input"


def test_jsonc_sample_with_comments_is_extracted() -> None:
    text = (SAMPLES / "list_movies__gitTobby-cloneCodding.jsonc").read_text(encoding="utf-8")
    envelope = extract_json(text)
    assert envelope["status"] == "ok"
    assert len(transform.list_page_movies(envelope["data"])) == envelope["data"]["limit"]


@pytest.mark.parametrize("path", MODERN_LISTS, ids=lambda p: p.name)
def test_modern_list_rows_match_the_json(path: Path) -> None:
    data = load(path)["data"]
    for movie in transform.list_page_movies(data):
        row = transform.movie_row(movie)
        assert row["id"] == movie["id"]
        for field in ("title", "imdb_code", "slug", "url", "language", "mpa_rating", "state",
                      "date_uploaded", "medium_cover_image", "description_full"):
            assert row[field] == movie.get(field), field
        assert row["year"] == int(movie["year"])
        assert row["rating"] == float(movie["rating"])
        assert row["runtime"] == int(movie["runtime"])
        assert row["date_uploaded_unix"] == movie["date_uploaded_unix"]
        assert json.loads(row["genres"]) == movie.get("genres", [])
        assert json.loads(row["raw"]) == movie
        torrents = transform.torrent_rows(movie)
        assert [t["hash"] for t in torrents] == [t["hash"].upper() for t in movie["torrents"]]
        for got, source in zip(torrents, movie["torrents"]):
            assert got["seeds"] == source["seeds"] and got["size_bytes"] == source["size_bytes"]
            assert got["quality"] == source["quality"] and got["type"] == source.get("type")
            assert got["is_repack"] == (int(source["is_repack"]) if source.get("is_repack") else None)
            assert got["magnet"].startswith(f"magnet:?xt=urn:btih:{source['hash'].upper()}&dn=")


def test_empty_pages_have_no_movies_key() -> None:
    for name in ("list_movies__yts-api-rs-empty.json", "list_movies__GabJS10-yts-movie-player-empty.json",
                 "list_movies__jackett-issue-9668-count-without-movies.json"):
        data = load(SAMPLES / name)["data"]
        assert "movies" not in data
        assert transform.list_page_movies(data) == []


def test_modern_details_with_images_and_cast() -> None:
    movie = transform.details_movie(load(SAMPLES / "movie_details__GabJS10-yts-movie-player.json")["data"])
    row = transform.details_row(movie)
    assert row["like_count"] == 493
    assert row["large_screenshot_image3"].endswith("/large-screenshot3.jpg")
    assert "Keanu Reeves" in row["cast_names"]
    cast = transform.cast_rows(movie)
    assert [c["name"] for c in cast][:2] == ["Keanu Reeves", "Jessica Henwick"]
    torrents = {t["hash"]: t for t in transform.torrent_rows(movie)}
    uhd = torrents["C8B8584842A104F6CC90A55C545F98B04C165186"]
    assert uhd["is_repack"] is None and uhd["bit_depth"] == 10 and uhd["video_codec"] == "x265"


def test_cast_without_small_image_keeps_the_member() -> None:
    movie = transform.details_movie(load(SAMPLES / "movie_details__yts-api-rs-images-cast.json")["data"])
    cast = transform.cast_rows(movie)
    assert len(cast) == 4
    assert sum(member["url_small_image"] is None for member in cast) == 2


def test_details_that_are_no_answer_are_told_apart_from_not_found() -> None:
    placeholder = load(SAMPLES / "movie_details__GabJS10-yts-movie-player-not_found.json")["data"]
    real = load(SAMPLES / "movie_details__GabJS10-yts-movie-player.json")["data"]
    movie_id = real["movie"]["id"]
    assert transform.details_no_answer(placeholder, 12345) is None  # "not found" is an answer
    assert transform.details_no_answer(real, movie_id) is None
    assert "answered with movie" in transform.details_no_answer(real, movie_id + 1)
    assert "without a movie" in transform.details_no_answer({}, movie_id)  # "data": null
    for idless in ({}, {"title": "x"}, {"id": "abc"}, {"id": None}):  # no id is no placeholder: retried
        assert "without a usable id" in transform.details_no_answer({"movie": idless}, movie_id)
        assert not transform.is_placeholder(idless)
    assert transform.details_no_answer({"movie": {"id": "0"}}, movie_id) is None  # id 0, however typed


def test_child_lists_that_are_no_answer() -> None:
    for path in SAMPLES.glob("movie_*.json"):  # every recorded answer of a per-movie list endpoint is one
        endpoint = path.name.split("__")[0]
        if endpoint in transform.CHILD_LISTS:
            assert transform.children_no_answer(endpoint, load(path)["data"]) is None, path.name
    assert transform.children_no_answer("movie_reviews", {"review_count": "0"}) is None  # the empty list left out
    assert transform.children_no_answer("movie_suggestions", {"movie_count": 0, "movies": []}) is None
    for data in ({}, None, {"review_count": 3}, {"reviews": None, "review_count": 2}, {"reviews": {"a": 1}}):
        assert "without its list" in transform.children_no_answer("movie_reviews", data)


def test_placeholder_movie_is_not_found() -> None:
    data = load(SAMPLES / "movie_details__GabJS10-yts-movie-player-not_found.json")["data"]
    assert transform.is_placeholder(transform.details_movie(data))
    real = load(SAMPLES / "movie_details__GabJS10-yts-movie-player.json")["data"]
    assert not transform.is_placeholder(transform.details_movie(real))


def test_list_pages_echo_the_paging_asked_for() -> None:
    echoed = {path.name: transform.echoed_paging(load(path)["data"]) for path in SAMPLES.glob("list_movies__*.json")}
    assert echoed["list_movies__GabJS10-yts-movie-player.json"] == (1, 5)  # asked limit=5&page=1 (SOURCES.md)
    assert echoed["list_movies__florinutz-yts.json"] == (1, 2)  # limit=2
    assert all(number == 1 and size for number, size in echoed.values()), echoed
    assert transform.echoed_paging({"page_number": "3", "limit": None}) == (3, None)


def test_suggestions_despite_zero_movie_count() -> None:
    data = load(SAMPLES / "movie_suggestions__GabJS10-yts-movie-player.json")["data"]
    rows = transform.suggestion_rows(38698, data)
    assert data["movie_count"] == 0 and len(rows) == 4
    assert rows[0] == {"movie_id": 38698, "position": 0, "suggested_id": 38746}


def test_legacy_2015_schemas_do_not_crash() -> None:
    details = transform.details_movie(load(SAMPLES / "movie_details__jonlunsford-yify-2015.json")["data"])
    assert details["id"] == 353
    cast = transform.cast_rows(details)  # 2015 called the cast "actors", and their thumbnails small_image
    assert cast[0]["url_small_image"] == "http://s.ynet.io/assets/images/actors/thumb/nm0005377.jpg"
    suggestions = transform.suggestion_rows(353, load(SAMPLES / "movie_suggestions__jonlunsford-yify-2015.json")["data"])
    assert len(suggestions) == 4
    reviews = transform.review_rows(353, load(SAMPLES / "movie_reviews__jonlunsford-yify-2015.json")["data"])
    assert reviews and reviews[0]["user_rating"] == 5
    guides = transform.parental_guide_rows(353, load(SAMPLES / "movie_parental_guides__jonlunsford-yify-2015.json")["data"])
    assert [g["type"] for g in guides][:2] == ["Nudity", "Violence"]
    comments = transform.comment_rows(353, load(SAMPLES / "movie_comments__jonlunsford-yify-2015.json")["data"])
    assert comments[0]["comment_id"] == 321422


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.body-redacted.txt")), ids=lambda p: p.name)
def test_redacted_bodies_are_rejected_cleanly(path: Path) -> None:
    with pytest.raises(ValueError):
        extract_json(path.read_text(encoding="utf-8"))


def test_plain_text_429_body_is_described() -> None:
    text = (SAMPLES / "error_http429__jackett-issue-16463.txt").read_text(encoding="utf-8")
    with pytest.raises(ValueError):
        extract_json(text)
    assert describe_bad_body(text).startswith("non-JSON body: Thanks for your interest")


def test_the_recorded_samples_are_all_there() -> None:
    assert len(JSON_SAMPLES) >= 30 and len(MODERN_LISTS) >= 8, f"samples missing from {SAMPLES}"
