"""The HTTP client: one session, a shared rate limiter, retries, host failover and error types."""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlencode, urlsplit

import orjson
import requests
import tenacity
import urllib3

from . import __version__
from .config import API_PATH, Config

log = logging.getLogger(__name__)

USER_AGENT = f"yts-mirror/{__version__} (+offline catalog mirror; polite crawler)"
MAX_BODY_BYTES = 16 * 2**20  # a 50-movie list page is about 250 KB; an endless body must not fill the memory
MAX_REDIRECTS = 3  # a moved domain redirects once or twice; a loop ends here
READ_CHUNK = 2**16


class YTSError(Exception):
    """Base class for every error the client raises."""


class TransientError(YTSError):
    """A failure worth retrying: network trouble, 429, 5xx, HTML or truncated bodies."""

    def __init__(self, url: str, reason: str, retry_after: float | None = None, host_failure: bool = False,
                 server_failure: bool = False, unanswered: bool = False, rate_limited: bool = False):
        super().__init__(f"{reason} ({url})")
        self.url = url
        self.reason = reason
        self.retry_after = retry_after
        self.rate_limited = rate_limited  # a 429: the whole client waits
        self.host_failure = host_failure  # unreachable, or a moved domain's 403/404: this host may be gone
        self.server_failure = server_failure  # 5xx, no JSON, a wrong page: this host may be down
        self.unanswered = unanswered  # no HTTP response at all: refused, reset, timed out


class FetchError(YTSError):
    """A permanent failure: retries are exhausted or the request can never succeed."""

    def __init__(self, url: str, reason: str, attempts: int = 1, status: int | None = None,
                 unanswered: bool = False):
        super().__init__(f"{url}: {reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.url = url
        self.reason = reason
        self.attempts = attempts
        self.status = status  # the HTTP status of a final answer, where one came
        self.unanswered = unanswered  # no attempt got any HTTP response

    @property
    def not_found(self) -> bool:
        """A final 404 that says what is wrong in a JSON envelope (another yts-mirror's API)."""
        return self.status == 404


class InsecureRedirect(requests.RequestException):
    """A redirect from https to plain http, which the client does not follow."""


class Stopped(YTSError):
    """A stop was asked for while a request waited for its next attempt."""


class RateLimiter:
    """A thread-safe token bucket: `rate` requests per second with bursts of `burst`."""

    def __init__(self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._tokens = float(self.burst)
        self._updated = clock()
        self._held_until = float("-inf")
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token and return how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            held = max(0.0, self._held_until - now)
            if self.rate <= 0:
                return held
            self._refill(now)
            self._tokens -= 1
            return max(held, 0.0 if self._tokens >= 0 else -self._tokens / self.rate)

    def hold(self, seconds: float) -> None:
        """Start no request for `seconds` (a 429 asks the client to slow down), then go on at the rate."""
        with self._lock:
            now = self._clock()
            self._held_until = max(self._held_until, now + seconds)
            if self.rate > 0:  # the next token comes as the hold ends: no burst of waiting requests then
                self._refill(now)
                self._tokens = min(self._tokens, 1 - (self._held_until - now) * self.rate)

    def held(self) -> bool:
        """Whether a hold is in force now (a token taken before it must not be used)."""
        with self._lock:
            return self._clock() < self._held_until

    def _refill(self, now: float) -> None:
        """Add the tokens earned since the last update, up to the burst."""
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a Retry-After header given in seconds or as an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, AttributeError):  # not a date, or one no clock can hold
        return None
    return max(0.0, when - (time.time() if now is None else now))


_decoder = json.JSONDecoder()
_ENVELOPE_START = re.compile(r'\{\s*"status"\s*:')


# An escaped backslash, a surrogate pair, or a lone surrogate (which no UTF-8 text can hold).
_SURROGATE_ESCAPE = re.compile(r"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
                               r"|\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _lone_surrogate_to_replacement(match: re.Match[str]) -> str:
    text = match.group(0)
    return text if text == "\\\\" or len(text) == 12 else "\\ufffd"


def extract_json(text: str) -> Any:
    """Decode a JSON body, tolerating stray HTML or notices before or after the envelope."""
    if "\\u" in text:  # Python's json keeps a lone surrogate, which SQLite cannot store; orjson refuses it
        text = _SURROGATE_ESCAPE.sub(_lone_surrogate_to_replacement, text)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        pass
    return _find_envelope(text)


def decode_body(body: bytes, text: Callable[[], str]) -> Any:
    """Decode a response body: orjson on the bytes, else `extract_json` on the decoded text."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return extract_json(text())


def _find_envelope(text: str) -> Any:
    """The first `{"status": ...}` object in a text with other things around it."""
    for match in _ENVELOPE_START.finditer(text):
        try:
            value, _ = _decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON envelope in body")


def _error_envelope(text: str) -> str | None:
    """The status_message of a JSON error envelope, or None for any other body."""
    try:
        envelope = json.loads(text)
    except ValueError:
        return None
    if isinstance(envelope, dict) and envelope.get("status") == "error":
        return str(envelope.get("status_message") or "error")
    return None


def describe_bad_body(text: str) -> str:
    """Name what a non-JSON body looks like, for error messages."""
    head = text.lstrip()[:200].lower()
    if not head:
        return "empty body"
    if head.startswith("<") or "<html" in head:
        return "HTML page instead of JSON"
    if head.startswith("{") or head.startswith("["):
        return "truncated JSON"
    return "non-JSON body: " + " ".join(text.split())[:80]


def describe_network_error(error: requests.RequestException) -> str:
    """A short reason for a connection failure or timeout, without urllib3's nesting."""
    if isinstance(error, requests.Timeout):
        return "timed out"
    text = str(getattr(error.args[0], "reason", None) or error) if error.args else str(error)
    if "[Errno" in text:
        text = text[text.index("[Errno"):].rstrip("')\"")
    elif "RemoteDisconnected" in text or "Connection aborted" in text:
        text = "connection closed by the server"
    return f"connection failed: {text}"


def describe_request_error(error: Exception) -> str:
    """A short reason for a request that ended in neither a response nor a network error."""
    redirect = (requests.TooManyRedirects, requests.exceptions.InvalidSchema, InsecureRedirect, ValueError)
    return f"bad redirect: {error}" if isinstance(error, redirect) else f"{type(error).__name__}: {error}"


def describe_body_error(error: Exception) -> str:
    """A short reason for a body that could not be read to its end."""
    if isinstance(error, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(error, urllib3.exceptions.DecodeError):
        return "content encoding does not decode"
    if isinstance(error, urllib3.exceptions.ProtocolError):
        return "connection closed before the end"
    return type(error).__name__


@dataclass
class ClientStats:
    """Counters shared by every thread using one client."""

    requests: int = 0
    retries: int = 0
    answered: int = 0  # requests that got an HTTP response, whatever its status
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_request(self) -> None:
        """Count one request sent."""
        with self.lock:
            self.requests += 1

    def count_answer(self) -> None:
        """Count one HTTP response received."""
        with self.lock:
            self.answered += 1

    def count_retry(self) -> None:
        """Count one retry."""
        with self.lock:
            self.retries += 1

    def add(self, requests: int, retries: int, answered: int) -> None:
        """Count what another client (a page reader process) spent for this one."""
        with self.lock:
            self.requests += requests
            self.retries += retries
            self.answered += answered


Validator = Callable[[Mapping[str, Any]], None]


class Session(requests.Session):
    """A requests.Session that reads proxy and CA-bundle settings from the environment once per host."""

    # requests rereads every environment variable on each request, a few percent of a fast crawl.
    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[str, str], Any] = {}

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        """requests' own merge, computed once per scheme and host when the request sets none of these itself."""
        if proxies or stream is not None or verify is not None or cert is not None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = urlsplit(url)[:2]
        if key not in self._environment:
            self._environment[key] = super().merge_environment_settings(url, {}, None, None, None)
        settings = self._environment[key]
        return {**settings, "proxies": dict(settings["proxies"])}


class YTSClient:
    """Fetches YTS API v2 endpoints politely, with retries and failover across base URLs."""

    def __init__(
        self,
        base_urls: Sequence[str],
        rate: float = 0.4,
        burst: int = 1,
        max_attempts: int = 6,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        user_agent: str = USER_AGENT,
        pool_size: int = 8,
    ):
        if not base_urls:
            raise ValueError("at least one base URL is needed")
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.limiter = RateLimiter(rate, burst)
        self.max_attempts = max(1, max_attempts)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.timeout = (connect_timeout, read_timeout)
        self.stats = ClientStats()
        self._host_index = 0
        self._answering_index = 0  # the host that answered last; a change is worth a warning
        self._answered: set[int] = set()  # hosts that have answered at least once
        self._strikes = 0  # failures of the current host since it last answered
        self.moved: set[tuple[str, str]] = set()  # (host, where it redirects for good), warned about
        self._host_lock = threading.Lock()
        self.stop: threading.Event | None = None  # when set, it ends any wait of a request
        self.on_retry: Callable[[str | None], None] | None = None  # told of each wait for a retry; None: answered
        self.session = Session()
        self.session.headers.update({"User-Agent": user_agent, "Accept": "application/json"})
        self.session.max_redirects = MAX_REDIRECTS
        self.session.hooks["response"].append(self._before_redirect)
        self._local = threading.local()  # this thread's request: the base URL it went to, the redirects it had
        adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @property
    def base_url(self) -> str:
        """The base URL currently in use."""
        return self.base_urls[self._host_index]

    @property
    def answering_url(self) -> str | None:
        """The base URL that answered last, or None while none has."""
        return self.base_urls[self._answering_index] if self._answering_index in self._answered else None

    def start_at(self, url: str | None) -> None:
        """Begin with `url`, the host that answered last time, when it is one of ours."""
        if url in self.base_urls and url != self.base_url:
            self._host_index = self._answering_index = self.base_urls.index(url)
            log.info("starting with %s, the API host that answered last time", url)

    def adopt(self, url: str) -> None:
        """Go on with `url`, a host of ours that another client (a page reader process) found answering."""
        if url in self.base_urls:
            with self._host_lock:
                self._host_index = self._answering_index = self.base_urls.index(url)
                self._answered.add(self._host_index)
                self._strikes = 0

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    def _strike(self, host_index: int, error: TransientError) -> None:
        """Count a failure against the current host; move to the next one when it looks gone or down."""
        if not (error.host_failure or error.server_failure) or len(self.base_urls) == 1:
            return
        with self._host_lock:
            if host_index != self._host_index:
                return  # another thread has moved on already
            self._strikes += 1
            # A host that never answered goes at its first connection failure; one that has
            # answered survives a reset or two; a string of 5xx or HTML pages means it is down.
            needed = 1 if error.host_failure and host_index not in self._answered else 3
            if self._strikes >= needed:
                self._host_index = (host_index + 1) % len(self.base_urls)
                self._strikes = 0
                log.info("switching API host to %s", self.base_urls[self._host_index])

    def _answered_by(self, host_index: int) -> None:
        """Note a good answer; warn once when a different host than before starts answering."""
        with self._host_lock:
            if host_index == self._host_index:  # a late answer from a host we left clears nothing
                self._strikes = 0
            if host_index not in self._answered or host_index != self._answering_index:
                self._answered.add(host_index)
                if host_index != self._answering_index:
                    log.warning("%s is not answering; now using %s", self.base_urls[self._answering_index],
                                self.base_urls[host_index])
                    self._answering_index = host_index

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        """Exponential backoff with equal jitter (half to all of it), but never less than Retry-After."""
        backoff = self._backoff(retry_state.attempt_number)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        return self._at_least_retry_after(random.uniform(backoff / 2, backoff), error)

    def _rate_limit_pause(self, error: TransientError) -> float:
        """How long a final 429 holds the client: its Retry-After, or the longest backoff."""
        return self._at_least_retry_after(self._backoff(self.max_attempts), error)

    def _backoff(self, failed_attempts: int) -> float:
        """The longest wait after that many failed attempts: doubling from backoff_initial, up to backoff_max."""
        return min(self.backoff_max, self.backoff_initial * 2 ** (failed_attempts - 1))

    def _at_least_retry_after(self, delay: float, error: BaseException | None) -> float:
        """`delay`, or the error's Retry-After where longer (up to 5 x backoff_max)."""
        if isinstance(error, TransientError) and error.retry_after is not None:
            return max(delay, min(error.retry_after, self.backoff_max * 5))
        return delay

    def _sleep(self, seconds: float) -> None:
        """Wait for a retry (backoff can last minutes) or a token, unless a stop is asked for meanwhile."""
        if self.stop is None:
            time.sleep(seconds)
        elif self.stop.wait(seconds):
            raise Stopped("stopped while waiting to send a request")

    def _before_sleep(self, retry_state: tenacity.RetryCallState) -> None:
        self.stats.count_retry()
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, TransientError) and error.rate_limited and retry_state.next_action:
            self.limiter.hold(retry_state.next_action.sleep)  # a 429 is for every thread, not this request alone
        log.info("retry %d after %s", retry_state.attempt_number, error)
        if self.on_retry is not None:
            self.on_retry(retry_notice(error, retry_state.attempt_number, self.max_attempts,
                                       retry_state.next_action.sleep if retry_state.next_action else 0.0))

    def get(
        self,
        endpoint: str,
        params: Mapping[str, Any] | None = None,
        validate: Validator | None = None,
        guard: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> Mapping[str, Any]:
        """GET `endpoint` (e.g. "list_movies") and return the envelope's `data`.

        `validate(data)` may raise TransientError to have a bad answer retried; `guard()` wraps
        every attempt (the enrichment circuit breaker uses it to stop retrying a dead endpoint).
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(TransientError),
            before_sleep=self._before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        answered: list[bool] = []  # one entry per failed attempt: did it get an HTTP response?
        hosts: dict[str, None] = {}  # the base URLs tried, the last one last

        def attempt() -> Mapping[str, Any]:
            self._local.host = None
            try:
                return self._guarded_attempt(endpoint, dict(params or {}), validate, guard)
            except TransientError as error:
                answered.append(not error.unanswered)
                raise
            finally:
                if self._local.host:
                    hosts.pop(self._local.host, None)
                    hosts[self._local.host] = None

        try:
            return retrying(attempt)
        except TransientError as error:
            if error.rate_limited:  # refused to the last: what comes next waits, as after any 429
                self.limiter.hold(self._rate_limit_pause(error))
            others = list(hosts)[:-1]  # the last named itself, if by the URL it was redirected to
            reason = f"{error.reason}; also tried {', '.join(others)}" if others else error.reason
            raise FetchError(error.url, reason, self.max_attempts, unanswered=not any(answered)) from error
        finally:
            if answered and self.on_retry is not None:
                self.on_retry(None)  # answered, or failed for good: this request waits no more

    def _guarded_attempt(self, endpoint: str, params: dict[str, Any], validate: Validator | None,
                         guard: Callable[[], AbstractContextManager[Any]] | None) -> Mapping[str, Any]:
        """One attempt, inside the caller's guard if there is one."""
        if guard is None:
            return self._attempt(endpoint, params, validate)
        with guard():
            return self._attempt(endpoint, params, validate)

    def _take_token(self) -> None:
        """Wait for the rate limiter, and count the request about to go out (none once a stop is asked for)."""
        while True:
            if self.stop is not None and self.stop.is_set():  # as after a wait for its turn at a failing endpoint
                raise Stopped("stopped before sending a request")
            delay = self.limiter.reserve()
            if delay > 0:
                self._sleep(delay)  # several workers can queue for tokens for many seconds
            if not self.limiter.held():  # else a 429 came while it waited: queue again after its pause
                break
        self.stats.count_request()

    def _before_redirect(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """A response hook: a redirect's next request waits for its own token, and never leaves https."""
        if not response.is_redirect:
            return
        self._local.redirects = getattr(self._local, "redirects", 0) + 1
        if self._local.redirects > MAX_REDIRECTS:
            return  # requests raises TooManyRedirects rather than send it
        location = response.headers.get("Location", "")
        if urlsplit(response.url).scheme == "https" and urlsplit(location).scheme == "http":
            raise InsecureRedirect(f"redirected from https to plain {location}")
        self._take_token()

    def _warn_if_moved(self, response: requests.Response) -> None:
        """Warn, once per process and host, of an answer that came through permanent redirects to another host."""
        if not response.history or any(hop.status_code not in (301, 308) for hop in response.history):
            return
        old, new = origin(response.history[0].url), origin(response.url)
        with self._host_lock:
            if old == new or (old, new) in self.moved:
                return
            self.moved.add((old, new))
        log.warning("%s has moved to %s for good (HTTP redirects): each request costs %d; put %s first in "
                    "api.base_urls or pass --base-url %s", old, new, len(response.history) + 1, new, new)

    def _attempt(self, endpoint: str, params: dict[str, Any], validate: Validator | None) -> Mapping[str, Any]:
        """Send one request and classify its outcome."""
        host_index = self._host_index
        self._local.host, self._local.redirects = self.base_urls[host_index], 0
        url = f"{self._local.host}{API_PATH}/{endpoint}.json"
        self._take_token()
        try:
            response = self.session.get(url, params=params, timeout=self.timeout, stream=True)
        except (requests.ConnectionError, requests.Timeout) as error:
            failure = TransientError(with_query(url, params), describe_network_error(error), host_failure=True,
                                     unanswered=True)
            self._strike(host_index, failure)
            raise failure from error
        except (requests.RequestException, ValueError) as error:  # a redirect loop, out of https, to no URL
            failure = TransientError(with_query(url, params), describe_request_error(error), server_failure=True)
            self._strike(host_index, failure)
            raise failure from error
        self.stats.count_answer()
        try:
            data = self._classify(url, response, self._read_body(response, url))
            if validate is not None:
                validate(data)
            self._answered_by(host_index)
            self._warn_if_moved(response)
            return data
        except TransientError as error:
            # A 403/404 page for one endpoint of a host that serves the list is that endpoint's.
            if not (error.host_failure and endpoint != "list_movies" and host_index in self._answered):
                self._strike(host_index, error)
            raise

    def _read_body(self, response: requests.Response, url: str) -> bytes:
        """The whole body within `read_timeout` seconds and MAX_BODY_BYTES (each read alone could trickle on for good)."""
        deadline = time.monotonic() + self.timeout[1]
        body = bytearray()
        try:
            while chunk := response.raw.read1(READ_CHUNK, decode_content=True):  # what has come, up to a chunk
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise TransientError(response.url or url, f"body over {MAX_BODY_BYTES // 2**20} MB",
                                         server_failure=True)
                if time.monotonic() > deadline:
                    raise TransientError(response.url or url, f"body still coming after {self.timeout[1]:g} s",
                                         server_failure=True)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            response.close()
            raise TransientError(response.url or url, f"body lost: {describe_body_error(error)}",
                                 server_failure=True) from error
        except TransientError:
            response.close()  # the rest of the body is not wanted: nor is the connection
            raise
        return bytes(body)

    def _classify(self, url: str, response: requests.Response, body: bytes) -> Mapping[str, Any]:
        """Turn an HTTP response and its body into `data`, or raise the matching error."""
        full_url = response.url or url
        status = response.status_code

        def text() -> str:  # decoded only where needed: orjson reads the bytes
            return body.decode("utf-8", errors="replace")  # not requests' guess: ISO-8859-1 for text/html

        if status >= 400:
            _raise_for_status(full_url, status, response.headers.get("Retry-After"), text)
        return _envelope_data(full_url, body, text)


def retry_notice(error: BaseException | None, attempt: int, attempts: int, wait: float) -> str:
    """A failed attempt, for people: "retrying in 4 s: HTTP 503 (yts.mx, attempt 2 of 6)"."""
    where = f"{urlsplit(error.url).netloc}, " if isinstance(error, TransientError) else ""
    reason = error.reason if isinstance(error, TransientError) else str(error)
    return f"retrying in {math.ceil(wait)} s: {reason} ({where}attempt {attempt + 1} of {attempts})"


def origin(url: str) -> str:
    """A URL's scheme and host (with its port), as a base URL names a site."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def with_query(url: str, params: Mapping[str, Any]) -> str:
    """`url` with `params` as requests sends them, to name a request that got no response (which page, say)."""
    return f"{url}?{urlencode(params, doseq=True)}" if params else url


def make_client(config: Config) -> YTSClient:
    """Build the API client the config describes."""
    api = config.api
    return YTSClient(
        api.base_urls, rate=api.rate, burst=api.burst, max_attempts=api.max_attempts,
        backoff_initial=api.backoff_initial, backoff_max=api.backoff_max,
        connect_timeout=api.connect_timeout, read_timeout=api.read_timeout,
        pool_size=max(4, config.enrich.concurrency + 2),
    )


def _raise_for_status(url: str, status: int, retry_after: str | None, text: Callable[[], str]) -> NoReturn:
    """Raise the error an HTTP error status means: retried, failed over, or final."""
    if status == 429:
        # The 2026 rate-limit answer is plain text: error_http429__jackett-issue-16463.txt
        raise TransientError(url, "HTTP 429 Too Many Requests", retry_after_seconds(retry_after), rate_limited=True)
    if status >= 500:
        raise TransientError(url, f"HTTP {status}", retry_after_seconds(retry_after), server_failure=True)
    message = _error_envelope(text())
    if message:
        # Another yts-mirror's API says what is wrong in a JSON envelope: final, no failover.
        raise FetchError(url, f"HTTP {status}: {message}", status=status)
    if status in (403, 404, 408, 410):
        # A moved or blocked domain answers 403/404 pages: try the next host, then give up.
        raise TransientError(url, f"HTTP {status}", host_failure=True)
    raise FetchError(url, f"HTTP {status}")


def _envelope_data(url: str, body: bytes, text: Callable[[], str]) -> Mapping[str, Any]:
    """The `data` of a 2xx answer's status-ok envelope; anything else is retried."""
    try:
        envelope = decode_body(body, text)
    except ValueError:
        raise TransientError(url, describe_bad_body(text()), server_failure=True) from None
    if not isinstance(envelope, Mapping):
        raise TransientError(url, "JSON body is not an object")
    if envelope.get("status") != "ok":
        message = envelope.get("status_message") or "no status_message"
        raise TransientError(url, f"API error: {message}")  # often one endpoint's: no reason to leave the host
    data = envelope.get("data")
    return data if isinstance(data, Mapping) else {}
