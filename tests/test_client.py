"""The client against the loopback simulator: retries, failover, errors and the rate limiter."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler

import pytest
import requests

from mirror.client import (MAX_BODY_BYTES, MAX_REDIRECTS, FetchError, InsecureRedirect, RateLimiter, YTSClient,
                           extract_json, retry_after_seconds)
from mirror.fakeapi import FAULT_KINDS, Catalog, FakeYTS
from support import ENVELOPE, free_port, misbehaving_server, send, wait_for


def fast_client(*urls: str, attempts: int = 8, rate: float = 0) -> YTSClient:
    return YTSClient(list(urls), rate=rate, max_attempts=attempts, backoff_initial=0.001, backoff_max=0.01,
                     connect_timeout=1, read_timeout=2)


def test_a_late_answer_from_a_host_left_behind_keeps_the_new_hosts_strikes() -> None:
    from mirror.client import TransientError

    client = fast_client("http://127.0.0.1:9", "http://127.0.0.1:10")
    client._answered_by(0)  # the first host has answered, so it survives two failures
    for _ in range(3):
        client._strike(0, TransientError("u", "503", server_failure=True))
    client._strike(1, TransientError("u", "503", server_failure=True))
    client._answered_by(0)  # a request sent to the first host before the switch answers late
    client._strike(1, TransientError("u", "503", server_failure=True))
    client._strike(1, TransientError("u", "503", server_failure=True))
    assert client.base_url == "http://127.0.0.1:9"  # three strikes on the second: back to the first
    client.close()


def test_lone_surrogates_become_replacement_characters() -> None:
    # orjson refuses a lone surrogate; Python's json keeps it, and neither UTF-8 nor SQLite can hold one
    text = r'{"a":"\ud800","b":"\ud83d\ude00","c":"\\ud800","d":"x\udc00y"}'
    assert extract_json(text) == {"a": "\ufffd", "b": "\U0001f600", "c": "\\ud800", "d": "x\ufffdy"}


@pytest.mark.parametrize("kind", [*FAULT_KINDS, "stray", "empty"])
def test_each_fault_kind_is_survived(simulator: Callable[..., FakeYTS], kind: str) -> None:
    sim = simulator(movies=120, faults=f"{kind}=0.5,retry_after=0")
    client = fast_client(sim.url, attempts=30)
    from mirror.crawl import fetch_page
    for page in (1, 2, 3) * 4:
        movies, count, _ = fetch_page(client, page)
        assert count == 120 and len(movies) == (50 if page < 3 else 20)
    assert sim.faults_injected.get(kind, 0) > 0
    if kind != "stray":
        assert client.stats.retries == sum(sim.fault_counts.values()) > 0
    else:
        assert client.stats.retries == 0


def test_proxies_come_from_the_environment(simulator: Callable[..., FakeYTS], monkeypatch: pytest.MonkeyPatch) -> None:
    sim = simulator(movies=10)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", sim.url)  # the simulator answers proxied requests too
    client = fast_client("http://yts.invalid")
    for _ in range(2):  # the environment is read for the first request to a host, then kept
        assert client.get("list_movies", {"limit": 5})["movie_count"] == 10
    assert sim.counts["list_movies"] == 2 and client.stats.requests == 2


def test_timeouts_are_retried(simulator: Callable[..., FakeYTS]) -> None:
    sim = simulator(movies=10, faults="timeout=0.5,timeout_s=0.5")
    client = YTSClient([sim.url], rate=0, max_attempts=20, backoff_initial=0.001, backoff_max=0.01,
                       read_timeout=0.2)
    for _ in range(4):
        assert client.get("movie_details", {"movie_id": 1})["movie"]["id"] == 1
    assert client.stats.retries == sim.faults_injected.get("timeout", 0)


def test_a_body_nested_too_deep_is_a_bad_body_not_a_crash() -> None:
    with pytest.raises(ValueError):
        extract_json("[" * 100_000)


def test_fails_over_to_the_next_host(simulator: Callable[..., FakeYTS], caplog: pytest.LogCaptureFixture) -> None:
    sim = simulator(movies=10)
    dead = f"http://127.0.0.1:{free_port()}"
    client = fast_client(dead, sim.url)
    assert client.get("list_movies", {"limit": 5})["movie_count"] == 10
    assert client.base_url == sim.url
    assert client.get("list_movies", {"limit": 5})["movie_count"] == 10
    assert client.stats.requests == 3  # one refused connection, then the working host twice
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"{dead} is not answering; now using {sim.url}"]  # once, not per request


def test_a_flaky_host_is_kept_rather_than_swapped_for_a_dead_one(simulator: Callable[..., FakeYTS]) -> None:
    live = simulator(movies=10, faults="reset=0.25", seed=5)
    client = fast_client(f"http://127.0.0.1:{free_port()}", live.url, attempts=6)
    for _ in range(60):  # a reset alone no longer sends us back to the dead host
        assert client.get("list_movies", {"limit": 5})["movie_count"] == 10
    assert live.faults_injected.get("reset", 0) > 10


@pytest.mark.parametrize("fault", ["http503", "html200"])
def test_a_host_that_is_up_but_broken_is_left_for_the_next(simulator: Callable[..., FakeYTS], fault: str) -> None:
    broken, live = simulator(movies=3, faults=f"{fault}=1"), simulator(movies=7)
    client = fast_client(broken.url, live.url, attempts=6)
    assert client.get("list_movies")["movie_count"] == 7
    assert broken.counts["list_movies"] == 3  # three failures in a row, then the next host


def test_a_host_that_moved_answers_404_and_is_skipped(simulator: Callable[..., FakeYTS]) -> None:
    moved, live = simulator(movies=3), simulator(movies=7)
    client = fast_client(moved.url + "/gone", live.url)
    assert client.get("list_movies")["movie_count"] == 7


def test_permanent_failure_names_url_and_reason(simulator: Callable[..., FakeYTS]) -> None:
    sim = simulator(movies=5, faults="dead=movie_reviews")
    client = fast_client(sim.url, attempts=3)
    with pytest.raises(FetchError) as caught:
        client.get("movie_reviews", {"movie_id": 1})
    message = str(caught.value)
    assert "/api/v2/movie_reviews.json?movie_id=1" in message and "HTTP 503" in message
    assert caught.value.attempts == 3 and client.stats.requests == 3


def test_error_envelope_is_retried_then_reported(simulator: Callable[..., FakeYTS]) -> None:
    sim = simulator(movies=5, faults="error=1")
    with pytest.raises(FetchError, match="API error: Database error"):
        fast_client(sim.url, attempts=2).get("list_movies")


def test_retry_after_is_honoured(simulator: Callable[..., FakeYTS]) -> None:
    sim = simulator(movies=5, faults="429=1,retry_after=1")
    client = YTSClient([sim.url], rate=0, max_attempts=2, backoff_initial=0.001, backoff_max=5)
    started = time.monotonic()
    with pytest.raises(FetchError, match="429"):
        client.get("list_movies")
    assert time.monotonic() - started >= 0.95


def test_each_wait_for_a_retry_is_told_with_its_reason_host_and_length(simulator: Callable[..., FakeYTS]) -> None:
    sim = simulator(movies=5, faults="429=1,retry_after=1")
    client = YTSClient([sim.url], rate=0, max_attempts=3, backoff_initial=0.001, backoff_max=5)
    notices: list[str | None] = []
    client.on_retry = notices.append
    with pytest.raises(FetchError):
        client.get("list_movies")
    host = sim.url.split("//")[1]
    assert notices == [f"retrying in 1 s: HTTP 429 Too Many Requests ({host}, attempt {n} of 3)" for n in (2, 3)] + [
        None]  # failed for good: it waits no more


class FirstAsked429(FakeYTS):
    """A simulator that answers its first request with a 429 (Retry-After: 1), noting when each request came."""

    def __init__(self, catalog: Catalog):
        super().__init__(catalog)
        self.arrivals: list[float] = []

    def respond(self, endpoint: str, params: Mapping[str, str]) -> tuple[int, dict[str, str], bytes, str | None]:
        with self.count_lock:
            self.arrivals.append(time.monotonic())
            first = len(self.arrivals) == 1
        if first:
            return 429, {"Content-Type": "text/plain", "Retry-After": "1"}, b"Too Many Requests", "429"
        return super().respond(endpoint, params)


def test_a_429_holds_the_other_threads_requests_too() -> None:
    with FirstAsked429(Catalog(60, 2)) as sim:
        client = YTSClient([sim.url], rate=0, max_attempts=3, backoff_initial=0.001, backoff_max=5)
        first = threading.Thread(target=client.get, args=("list_movies", {"page": 1}))
        first.start()
        wait_for(lambda: client.stats.retries == 1)  # refused, and waiting to retry
        client.get("list_movies", {"page": 2})  # another worker's request
        first.join()
    assert len(sim.arrivals) == 3 and min(sim.arrivals[1:]) - sim.arrivals[0] >= 0.9


class Page1Refused(FirstAsked429):
    """A simulator that always refuses page 1 with a 429 (Retry-After: 1)."""

    def respond(self, endpoint: str, params: Mapping[str, str]) -> tuple[int, dict[str, str], bytes, str | None]:
        with self.count_lock:
            self.arrivals.append(time.monotonic())
        if params.get("page") == "1":
            return 429, {"Content-Type": "text/plain", "Retry-After": "1"}, b"Too Many Requests", "429"
        return FakeYTS.respond(self, endpoint, params)


def test_a_429_that_ends_a_request_holds_the_next_one_too() -> None:
    with Page1Refused(Catalog(60, 2)) as sim:
        client = YTSClient([sim.url], rate=0, max_attempts=2, backoff_initial=0.001, backoff_max=5)
        with pytest.raises(FetchError, match="429"):
            client.get("list_movies", {"page": 1})
        client.get("list_movies", {"page": 2})  # the next movie's request, say
    assert len(sim.arrivals) == 3 and sim.arrivals[2] - sim.arrivals[1] >= 0.9


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("\u00b2") is None  # a digit to str.isdigit, not to float()
    assert retry_after_seconds("Mon, 01 Jan 99999999999999999999 00:00:00 GMT") is None
    assert retry_after_seconds("Fri, 04 Dec 2026 20:00:10 GMT", now=1796414400.0) == pytest.approx(10, abs=1)


def test_stray_html_around_json_is_extracted() -> None:
    body = '<br /><b>Warning</b>: x {"status":"ok","data":{"movie_count":1}}<!-- y {"a":1} -->'
    assert extract_json(body) == {"status": "ok", "data": {"movie_count": 1}}


def test_truncated_json_is_not_extracted() -> None:
    with pytest.raises(ValueError):
        extract_json('{"status":"ok","data":{"movies":[{"id":1},{"id"')


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_spaces_requests() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=0.4, burst=1, clock=clock)
    assert limiter.reserve() == 0
    assert limiter.reserve() == pytest.approx(2.5)
    assert limiter.reserve() == pytest.approx(5.0)  # queued behind the previous reservation
    clock.now = 100
    assert limiter.reserve() == 0  # refilled, but never beyond the burst
    assert limiter.reserve() == pytest.approx(2.5)


def test_a_hold_pauses_every_request_then_spaces_them_again() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10, burst=1, clock=clock)
    assert limiter.reserve() == 0
    limiter.hold(1.0)  # a 429's Retry-After
    assert limiter.held()
    assert [limiter.reserve() for _ in range(3)] == pytest.approx([1.0, 1.1, 1.2])  # after it, at the rate again
    clock.now = 1.0
    assert not limiter.held()
    unlimited = RateLimiter(rate=0, clock=clock)
    unlimited.hold(2.0)
    assert unlimited.reserve() == pytest.approx(2.0) and unlimited.held()


def test_rate_zero_never_waits() -> None:
    limiter = RateLimiter(rate=0)
    assert all(limiter.reserve() == 0 for _ in range(100))


def test_limiter_is_shared_by_threads() -> None:
    limiter = RateLimiter(rate=50, burst=1)
    stamps: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(5):
            time.sleep(limiter.reserve())  # as the client waits, less its stop check
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps.sort()
    elapsed = stamps[-1] - stamps[0]
    assert elapsed >= (len(stamps) - 1) / 50 * 0.95  # 20 requests never faster than 50/s


def test_json_error_envelope_on_404_is_final() -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b'{"status":"error","status_message":"movie 7 is not in this mirror yet"}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = fast_client(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(FetchError, match="not in this mirror yet"):
            client.get("movie_reviews", {"movie_id": 7})
        assert client.stats.requests == 1
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_loop_fails_over_and_each_hop_waits_for_its_token(simulator: Callable[..., FakeYTS]) -> None:
    hops: list[float] = []

    def loop(handler: BaseHTTPRequestHandler) -> None:
        hops.append(time.monotonic())
        send(handler, 302, b"", Location=handler.path)

    with misbehaving_server(loop) as url:
        client = YTSClient([url], rate=20, max_attempts=2, backoff_initial=0.001, backoff_max=0.01)
        with pytest.raises(FetchError, match="bad redirect"):
            client.get("list_movies")
        assert len(hops) == 2 * (MAX_REDIRECTS + 1) == client.stats.requests
        # The rate limit holds across hops (timed from the second: the first arrival also waits for a connection).
        assert hops[-1] - hops[1] >= (len(hops) - 2) / 20 * 0.9
        live = simulator(movies=4)
        client = fast_client(url, live.url, attempts=6)
        assert client.get("list_movies")["movie_count"] == 4


def test_a_host_that_moved_for_good_is_warned_about_once(simulator: Callable[..., FakeYTS],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    live = simulator(movies=4)

    def moved(handler: BaseHTTPRequestHandler) -> None:
        send(handler, 301, b"", Location=live.url + handler.path)

    with misbehaving_server(moved) as url, caplog.at_level(logging.WARNING, logger="mirror.client"):
        client = fast_client(url)
        for _ in range(3):
            assert client.get("list_movies")["movie_count"] == 4
    assert client.stats.requests == 6  # each redirect waits for a token of its own
    assert [r.getMessage() for r in caplog.records] == [
        f"{url} has moved to {live.url} for good (HTTP redirects): each request costs 2; put {live.url} first in "
        f"api.base_urls or pass --base-url {live.url}"]


def test_a_permanent_redirect_that_leads_nowhere_is_no_news_of_a_move(caplog: pytest.LogCaptureFixture) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    with misbehaving_server(lambda handler: send(handler, 301, b"", Location=gone + handler.path)) as url:
        with caplog.at_level(logging.WARNING, logger="mirror.client"), pytest.raises(FetchError):
            fast_client(url, attempts=2).get("list_movies")
    assert not [r for r in caplog.records if "has moved" in r.getMessage()]  # it did not work: no advice to use it


@pytest.mark.parametrize("location", ["http://[::zz", "file:///etc/passwd"])
def test_a_redirect_to_no_usable_url_is_one_error(location: str) -> None:
    with misbehaving_server(lambda handler: send(handler, 301, b"", Location=location)) as url:
        with pytest.raises(FetchError, match="bad redirect"):
            fast_client(url, attempts=2).get("list_movies")


def test_a_redirect_from_https_to_http_is_not_followed() -> None:
    client = fast_client("https://yts.example")
    response = requests.Response()
    response.status_code, response.url = 301, "https://yts.example/api/v2/list_movies.json"
    response.headers["Location"] = "http://yts.example/api/v2/list_movies.json"
    with pytest.raises(InsecureRedirect):
        client._before_redirect(response)
    response.headers["Location"] = "https://yts.new/api/v2/list_movies.json"
    client._before_redirect(response)  # a moved domain, still https


def test_a_body_that_trickles_fails_at_the_read_timeout() -> None:
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(100000):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.02)  # each read gets a byte well within the read timeout

    with misbehaving_server(trickle) as url:
        client = YTSClient([url], rate=0, max_attempts=2, backoff_initial=0.001, backoff_max=0.01,
                           connect_timeout=1, read_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(FetchError, match="body still coming after 0.5 s"):
            client.get("list_movies")
        assert time.monotonic() - started < 3


def test_an_endless_body_fails_at_the_size_cap() -> None:
    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"x" * 65536
        for _ in range(2 * MAX_BODY_BYTES // len(chunk)):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    with misbehaving_server(endless) as url:
        with pytest.raises(FetchError, match=f"body over {MAX_BODY_BYTES // 2**20} MB"):
            fast_client(url, attempts=1).get("list_movies")


@pytest.mark.parametrize("fault", ["cut short", "chunked cut", "bad gzip"])
def test_a_body_lost_on_the_way_fails_over(simulator: Callable[..., FakeYTS], fault: str) -> None:
    def broken(handler: BaseHTTPRequestHandler) -> None:
        if fault == "cut short":
            send(handler, 200, ENVELOPE[:20], Content_Length=str(len(ENVELOPE)))
        elif fault == "chunked cut":
            send(handler, 200, b"%x\r\n%s\r\n" % (len(ENVELOPE), ENVELOPE), Transfer_Encoding="chunked",
                 Content_Length="")
        else:
            send(handler, 200, b"not gzip at all", Content_Encoding="gzip")
        handler.close_connection = True

    with misbehaving_server(broken) as url:
        with pytest.raises(FetchError, match="body lost"):
            fast_client(url, attempts=2).get("list_movies")
        live = simulator(movies=4)
        assert fast_client(url, live.url, attempts=6).get("list_movies")["movie_count"] == 4


def test_json_in_an_html_page_without_a_charset_is_read_as_utf8() -> None:
    body = '<html><body>{"status":"ok","data":{"movie_count":1,"movies":[{"id":1,"title":"Amélie 東京"}]}}</body></html>'
    with misbehaving_server(lambda handler: send(handler, 200, body.encode(), Content_Type="text/html")) as url:
        assert fast_client(url).get("list_movies")["movies"][0]["title"] == "Amélie 東京"


def test_an_answer_after_retries_clears_the_notice(simulator: Callable[..., FakeYTS]) -> None:
    sim = simulator(movies=5, faults="http503=0.5,retry_after=0")
    client = fast_client(sim.url, attempts=30)
    notices: list[str | None] = []
    client.on_retry = notices.append
    while not notices:
        client.get("list_movies")
    assert notices[-1] is None and all(notices[:-1])
