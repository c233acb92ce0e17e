"""Configuration: flag, then environment variable, then TOML file, then defaults."""

from __future__ import annotations

import errno
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .transform import DEFAULT_TRACKERS

# The documented host first (yts-api-v2.txt), then the domains YTS answered on in 2026.
DEFAULT_BASE_URLS: tuple[str, ...] = (
    "https://yts.gs",
    "https://yts.gg",
    "https://yts.mx",
    "https://yts.lt",
)

ENRICH_ENDPOINTS: tuple[str, ...] = (
    "movie_details",
    "movie_suggestions",
    "movie_reviews",
    "movie_parental_guides",
    "movie_comments",
)

ENV_DB = "YTS_MIRROR_DB"
ENV_BASE_URL = "YTS_MIRROR_BASE_URL"
ENV_CONFIG = "YTS_MIRROR_CONFIG"


class ConfigError(ValueError):
    """A bad configuration value or file; the CLI reports it and exits 2."""


@dataclass(frozen=True)
class ApiConfig:
    """[api]: hosts, rate limit, retries and timeouts."""
    base_urls: tuple[str, ...] = DEFAULT_BASE_URLS
    rate: float = 0.4
    burst: int = 1
    max_attempts: int = 6
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 30.0


@dataclass(frozen=True)
class SyncConfig:
    """[sync]: how crawls end, guard removals and build magnets."""
    overlap: int = 10
    max_removed_fraction: float = 0.05
    trackers: tuple[str, ...] = DEFAULT_TRACKERS
    torrent_history: bool = True


@dataclass(frozen=True)
class EnrichConfig:
    """[enrich]: workers, endpoints, re-fetch ages and the circuit breaker."""
    concurrency: int = 1
    endpoints: tuple[str, ...] = (
        "movie_details", "movie_suggestions", "movie_reviews", "movie_parental_guides",
    )
    ttl_days: dict[str, float] = field(default_factory=lambda: {
        "movie_details": 90.0, "movie_suggestions": 180.0, "movie_reviews": 180.0,
        "movie_parental_guides": 365.0, "movie_comments": 30.0,
    })
    pause_after: int = 3


@dataclass(frozen=True)
class ScheduleConfig:
    """[schedule]: the jobs of `yts-mirror schedule`."""
    incremental_seconds: float = 3600.0
    full_cron: str = "0 4 * * 0"
    enrich_seconds: float = 1800.0
    enrich_limit: int = 100
    misfire_grace_seconds: int = 0  # 0: a late run still runs, however late


@dataclass(frozen=True)
class Config:
    """The whole configuration: the database path and each section."""
    db: str = "yts-mirror.db"
    api: ApiConfig = field(default_factory=ApiConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    enrich: EnrichConfig = field(default_factory=EnrichConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


SECTIONS = {"api": ApiConfig, "sync": SyncConfig, "enrich": EnrichConfig, "schedule": ScheduleConfig}


def _coerce(section: str, name: str, value: Any, default: Any) -> Any:
    """Check one TOML value against its default's type."""
    where = f"{section}.{name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        if isinstance(value, int) and abs(value) > 2**53:
            raise ConfigError(f"{where} is out of range: {value}")  # no limit is near, and as a float it would round
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        if value < 0:
            raise ConfigError(f"{where} must not be negative, not {value!r}")
        if isinstance(default, int) and not float(value).is_integer():
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        return type(default)(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where} must be a list of strings, not {value!r}")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, not {value!r}")
        merged = dict(default)
        for key, item in value.items():
            merged[key] = _coerce(where, key, item, 0.0)
        return merged
    return value


def _section(name: str, cls: type, values: Any) -> Any:
    """Build one config section from its TOML table."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    defaults = cls()
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key {name}.{key}")
        kwargs[key] = _coerce(name, key, value, getattr(defaults, key))
    return replace(defaults, **kwargs)


DAY, YEAR = 86_400, 31_536_000
# (section, key): the smallest and largest sensible value. Anything outside is a typo, or a
# number that would overflow a sleep or a timer deep inside a run.
LIMITS: dict[tuple[str, str], tuple[float, float]] = {
    ("api", "rate"): (0, 1000),
    ("api", "burst"): (1, 1000),
    ("api", "max_attempts"): (1, 100),
    ("api", "backoff_initial"): (0, DAY),
    ("api", "backoff_max"): (0, DAY),
    ("api", "connect_timeout"): (0.001, 3600),
    ("api", "read_timeout"): (0.001, 3600),
    ("sync", "overlap"): (1, 50),
    ("sync", "max_removed_fraction"): (0, 1),
    ("enrich", "concurrency"): (1, 64),
    ("enrich", "pause_after"): (1, 1000),
    ("schedule", "incremental_seconds"): (0, YEAR),
    ("schedule", "enrich_seconds"): (0, YEAR),
    ("schedule", "enrich_limit"): (0, 10_000_000),
    ("schedule", "misfire_grace_seconds"): (0, YEAR),
}
API_PATH = "/api/v2"
MIN_INTERVAL = 1.0  # seconds between scheduled runs of a job, unless 0 (off)
MIN_RATE = 1 / DAY  # below one request a day, a rate is surely a typo for 0 (no limit)


def validate(config: Config) -> Config:
    """Reject values that parse but make no sense."""
    if not config.api.base_urls:
        raise ConfigError("api.base_urls must name at least one URL")
    for url in config.api.base_urls:
        check_base_url(url)
    # A host named twice is one host, and an endpoint is listed once (stats counts its backlog once).
    base_urls = tuple(dict.fromkeys(site_root(url) for url in config.api.base_urls))
    config = replace(config, api=replace(config.api, base_urls=base_urls),
                     enrich=replace(config.enrich, endpoints=tuple(dict.fromkeys(config.enrich.endpoints))))
    for (section, key), (low, high) in LIMITS.items():
        value = getattr(getattr(config, section), key)
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{section}.{key} must be between {low:g} and {high:g}, not {value!r}")
    for key in ("incremental_seconds", "enrich_seconds"):
        if 0 < getattr(config.schedule, key) < MIN_INTERVAL:
            raise ConfigError(f"schedule.{key} must be 0 (off) or at least {MIN_INTERVAL:g} second")
    if config.api.backoff_initial > config.api.backoff_max:
        raise ConfigError(f"api.backoff_initial ({config.api.backoff_initial:g}) must not exceed api.backoff_max "
                          f"({config.api.backoff_max:g}), which caps every backoff")
    if 0 < config.api.rate < MIN_RATE:
        raise ConfigError(f"api.rate must be 0 (no limit) or at least one request a day ({MIN_RATE:.2g}/s)")
    for endpoint, days in config.enrich.ttl_days.items():
        if not days <= 100 * 365:
            raise ConfigError(f"enrich.ttl_days.{endpoint} must be at most 36500 days, not {days!r}")
    unknown = set(config.enrich.endpoints) - set(ENRICH_ENDPOINTS)
    if unknown:
        raise ConfigError(f"enrich.endpoints: unknown endpoint {sorted(unknown)[0]!r}; known: {', '.join(ENRICH_ENDPOINTS)}")
    unknown = set(config.enrich.ttl_days) - set(ENRICH_ENDPOINTS)
    if unknown:
        raise ConfigError(f"enrich.ttl_days: unknown endpoint {sorted(unknown)[0]!r}")
    for tracker in config.sync.trackers:
        check_tracker(tracker)
    return config


def check_tracker(url: str) -> None:
    """Raise ConfigError unless `url` looks like a tracker announce URL (it goes into every magnet)."""
    scheme, _, rest = url.partition("://")
    if not (scheme.isalpha() and rest) or not url.isprintable() or any(c.isspace() for c in url):
        raise ConfigError(f"sync.trackers: {url!r} is not a tracker URL such as udp://tracker.example:1337/announce")


def site_root(url: str) -> str:
    """The site's address a base URL gives: without trailing slashes, or the API's own /api/v2 path."""
    root = url.rstrip("/")
    if root.lower().endswith(API_PATH):  # people paste the API's address; the client adds the path itself
        root = root[: -len(API_PATH)].rstrip("/")
    return root


def check_base_url(url: str) -> None:
    """Raise ConfigError unless `url` is an http(s) URL with a usable host and port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"api.base_urls: {url!r} is not a valid URL: {error}") from None
    host = parts.hostname or ""
    host_ok = 0 < len(host) <= 253 and all(0 < len(label) <= 63 for label in host.split("."))  # DNS limits
    if not url.isprintable():  # a terminal's escape sequence, or bytes the locale could not decode
        raise ConfigError(f"api.base_urls: {url!r} holds control characters or bytes that are not text")
    if parts.scheme not in ("http", "https") or not host_ok or any(c.isspace() for c in url) or port == 0:
        raise ConfigError(f"api.base_urls: {url!r} is not an http(s) URL with a host name")
    if parts.query or parts.fragment or "?" in url or "#" in url:  # the API path and parameters follow the base
        raise ConfigError(f"api.base_urls: {url!r} has a query or fragment; give the site's address only")
    if parts.username or parts.password:  # it would be logged, and served by `serve`
        raise ConfigError(f"api.base_urls: {url!r} holds credentials; put them in ~/.netrc, which requests reads")


def parse_config(data: dict[str, Any]) -> Config:
    """Build a Config from a parsed TOML document."""
    config = Config()
    for key, value in data.items():
        if key == "db":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError("db must be a non-empty string")
            config = replace(config, db=value)
        elif key in SECTIONS:
            config = replace(config, **{key: _section(key, SECTIONS[key], value)})
        else:
            raise ConfigError(f"unknown config key {key}")
    return validate(config)


MAX_CONFIG_BYTES = 1024 * 1024


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the TOML file at `path` (or $YTS_MIRROR_CONFIG); defaults when neither is given."""
    path = path or os.environ.get(ENV_CONFIG)
    if not path:
        return Config()
    try:
        data = tomllib.loads(_config_text(path))
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 text") from None
    except ValueError as error:  # tomllib's own int() refuses integers of over 4,300 digits
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    try:
        return parse_config(data)
    except ConfigError as error:  # name the file: the flags and the environment can set keys too
        raise ConfigError(f"{path}: {error}") from None


LONGEST_SUFFIX = ".schedule.lock"  # of the files kept beside a database: -wal, -shm, .lock, .schedule.lock
SQLITE_MAX_PATH = 512 - len("-journal")  # bytes: SQLite's unix layer keeps room for a journal's name


def check_path_length(path: Path) -> None:
    """Raise ConfigError if SQLite or the system cannot name the files a database at `path` needs beside it."""
    if "\x00" in str(path):
        raise ConfigError("the database path holds a NUL character")
    if max(len(os.fsencode(os.path.abspath(path))), len(os.fsencode(os.path.realpath(path)))) > SQLITE_MAX_PATH:
        raise ConfigError(f"the database path {str(path)[:40]}... is too long: SQLite opens paths of up to "
                          f"{SQLITE_MAX_PATH} bytes")
    try:
        name_max = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):  # no such directory yet: the check that follows says so
        name_max = 255
    suffix = len(LONGEST_SUFFIX.encode())
    if len(os.fsencode(path.name)) + suffix > name_max:
        raise ConfigError(f"the database file name {path.name[:40]}... is too long: at most {name_max - suffix} bytes here")


def _link_loop(path: Path) -> bool:
    """Whether a path is a symbolic link that leads back to itself."""
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def _config_text(path: str | os.PathLike[str]) -> str:
    """A config file's text; ConfigError for what is no config file (a device such as /dev/zero would never end)."""
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # a pipe: --config <(...)
        raise ConfigError(f"config file {path} is not a regular file")
    with open(path, "rb") as handle:
        text = handle.read(MAX_CONFIG_BYTES + 1)
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES // 1024} KB; is it the right file?")
    return text.decode("utf-8-sig")  # a byte-order mark, as some editors write, is no TOML error


def resolve(
    config_path: str | None = None,
    db: str | None = None,
    base_url: str | None = None,
    rate: float | None = None,
    concurrency: int | None = None,
) -> Config:
    """Apply the precedence: flag, then environment, then file, then defaults."""
    for flag, env, value in (("--config", ENV_CONFIG, config_path), ("--db", ENV_DB, db),
                             ("--base-url", ENV_BASE_URL, base_url)):
        if value is None and os.environ.get(env) is not None:  # the flag's absence lets the variable speak
            flag, value = env, os.environ[env]
        if value is not None and not value.strip():
            raise ConfigError(f"{flag} must not be empty")
    config = load_config(config_path)
    db = db or os.environ.get(ENV_DB) or config.db
    base_url_flag = base_url is not None
    base_url = base_url or os.environ.get(ENV_BASE_URL)
    api = config.api
    if base_url:
        api = replace(api, base_urls=tuple(url.strip() for url in base_url.split(",") if url.strip()))
    if rate is not None:
        api = replace(api, rate=rate)
    enrich = config.enrich
    if concurrency is not None:
        enrich = replace(enrich, concurrency=concurrency)
    if db.endswith(("/", os.sep)):  # Path() would drop the slash, and a file would take the directory's name
        raise ConfigError(f"the database path {db} names a directory; give a file in it")
    path = Path(db)
    if str(path) == ":memory:":
        raise ConfigError("the database path :memory: names SQLite's database in memory, which keeps nothing; "
                          "give a file")
    check_path_length(path)
    if _link_loop(path):
        raise ConfigError(f"the database path {db} is a symbolic link loop")
    if path.is_dir():
        raise ConfigError(f"the database path {db} is a directory")
    if path.exists() and not path.is_file():  # a FIFO would block the first read for good
        raise ConfigError(f"the database path {db} is not a regular file")
    links = path.stat().st_nlink if path.exists() else 1
    if links > 1:  # SQLite finds its -wal file by name: two names, two WALs, a corrupt database
        raise ConfigError(f"the database {db} has {links} hard links; SQLite corrupts a database written "
                          "through two names, so keep one (a symbolic link is fine)")
    if not Path(os.path.realpath(path)).parent.is_dir():  # a symbolic link's target's directory, too
        raise ConfigError(f"the database path {db} is not in an existing directory")
    sources = {"api.base_urls": "--base-url" if base_url_flag else ENV_BASE_URL if base_url else None,
               "api.rate": "--rate" if rate is not None else None,
               "enrich.concurrency": "--concurrency" if concurrency is not None else None}
    try:
        return validate(replace(config, db=str(path), api=api, enrich=enrich))
    except ConfigError as error:
        raise named_source(error, sources) from None


def named_source(error: ConfigError, sources: Mapping[str, str | None]) -> ConfigError:
    """`error`, naming the flag or environment variable its value came from, if not the config file."""
    message = str(error)
    for key, source in sources.items():
        if source and message.startswith(key):
            return ConfigError(f"{source} ({key}){message[len(key):]}")
    return error
