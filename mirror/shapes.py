"""Facts about the upstream API's answers that both the simulator and the mirror's own API reproduce."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# list_movies' sort_by keys (yts-api-v2.txt, "List Movies")
SORT_KEYS = ("title", "year", "rating", "peers", "seeds", "download_count", "like_count", "date_added")


def suggestion_form(movie: Mapping[str, Any]) -> dict[str, Any]:
    """A list movie as movie_suggestions shows it: no large cover, torrents without `type`."""
    # movie_suggestions__GabJS10-yts-movie-player.json
    out = {key: value for key, value in movie.items() if key != "large_cover_image"}
    out["torrents"] = [
        {key: value for key, value in torrent.items() if key != "type"} if isinstance(torrent, Mapping) else torrent
        for torrent in movie.get("torrents") or []
    ]
    return out
