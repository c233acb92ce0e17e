"""yts-mirror: an offline mirror of the YTS API v2 catalog in one SQLite file."""

__version__ = "0.1.0"
