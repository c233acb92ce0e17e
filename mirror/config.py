"""Configuration: flag, then environment variable, then TOML file, then defaults."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .transform import DEFAULT_TRACKERS

# The documented host first (yts-api-v2.txt), then the domains YTS answered on in 2026.
DEFAULT_BASE_URLS: tuple[str, ...] = (
    "https://yts.gs",
    "https://yts.gg",
    "https://yts.mx",
    "https://yts.lt",
)

ENDPOINTS: tuple[str, ...] = (
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
    overlap: int = 10
    max_removed_fraction: float = 0.05
    trackers: tuple[str, ...] = DEFAULT_TRACKERS
    torrent_history: bool = True


@dataclass(frozen=True)
class EnrichConfig:
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
    incremental_seconds: float = 3600.0
    full_cron: str = "0 4 * * 0"
    enrich_seconds: float = 1800.0
    enrich_limit: int = 200
    misfire_grace_seconds: int = 600


@dataclass(frozen=True)
class Config:
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
        if value < 0:
            raise ConfigError(f"{where} must not be negative, not {value!r}")
        if isinstance(default, int) and float(value) != int(value):
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


def validate(config: Config) -> Config:
    """Reject values that parse but make no sense."""
    if not config.api.base_urls:
        raise ConfigError("api.base_urls must name at least one URL")
    for url in config.api.base_urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"api.base_urls: {url!r} is not an http(s) URL")
    if config.api.max_attempts < 1:
        raise ConfigError("api.max_attempts must be at least 1")
    if config.enrich.concurrency < 1:
        raise ConfigError("enrich.concurrency must be at least 1")
    unknown = set(config.enrich.endpoints) - set(ENDPOINTS)
    if unknown:
        raise ConfigError(f"enrich.endpoints: unknown endpoint {sorted(unknown)[0]!r}; known: {', '.join(ENDPOINTS)}")
    unknown = set(config.enrich.ttl_days) - set(ENDPOINTS)
    if unknown:
        raise ConfigError(f"enrich.ttl_days: unknown endpoint {sorted(unknown)[0]!r}")
    if config.sync.max_removed_fraction > 1:
        raise ConfigError("sync.max_removed_fraction must be between 0 and 1")
    return config


def parse_config(data: dict[str, Any]) -> Config:
    """Build a Config from a parsed TOML document."""
    config = Config()
    for key, value in data.items():
        if key == "db":
            if not isinstance(value, str) or not value:
                raise ConfigError("db must be a non-empty string")
            config = replace(config, db=value)
        elif key in SECTIONS:
            config = replace(config, **{key: _section(key, SECTIONS[key], value)})
        else:
            raise ConfigError(f"unknown config key {key}")
    return validate(config)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the TOML file at `path` (or $YTS_MIRROR_CONFIG); defaults when neither is given."""
    path = path or os.environ.get(ENV_CONFIG)
    if not path:
        return Config()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    return parse_config(data)


def resolve(
    config_path: str | None = None,
    db: str | None = None,
    base_url: str | None = None,
    rate: float | None = None,
    concurrency: int | None = None,
) -> Config:
    """Apply the precedence: flag, then environment, then file, then defaults."""
    config = load_config(config_path)
    db = db or os.environ.get(ENV_DB) or config.db
    base_url = base_url or os.environ.get(ENV_BASE_URL)
    api = config.api
    if base_url:
        api = replace(api, base_urls=tuple(url.strip() for url in base_url.split(",") if url.strip()))
    if rate is not None:
        api = replace(api, rate=rate)
    enrich = config.enrich
    if concurrency is not None:
        enrich = replace(enrich, concurrency=concurrency)
    return validate(replace(config, db=str(Path(db)), api=api, enrich=enrich))
