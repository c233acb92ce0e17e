-- yts-mirror schema. The single source of truth: applied idempotently whenever a writer or
-- `serve` opens the database (`stats` and `search` apply it only to migrate an older mirror or
-- to recreate a dropped table).
-- Column names are a contract: users' SQL depends on them (see README "Schema").
-- Timestamps we write are UTC ISO-8601 strings ("2026-12-04T20:02:44.123456Z").

CREATE TABLE IF NOT EXISTS movies (
    id INTEGER PRIMARY KEY,                -- the YTS id
    imdb_code TEXT,
    title TEXT,
    title_english TEXT,
    title_long TEXT,
    slug TEXT,
    url TEXT,
    year INTEGER,
    rating REAL,
    runtime INTEGER,
    genres TEXT,                           -- JSON array, also in movie_genres
    summary TEXT,
    description_full TEXT,
    synopsis TEXT,
    yt_trailer_code TEXT,
    language TEXT,
    mpa_rating TEXT,
    background_image TEXT,
    background_image_original TEXT,
    small_cover_image TEXT,
    medium_cover_image TEXT,
    large_cover_image TEXT,
    state TEXT,
    date_uploaded TEXT,
    date_uploaded_unix INTEGER,
    -- filled by enrichment (movie_details)
    description_intro TEXT,
    like_count INTEGER,
    download_count INTEGER,
    medium_screenshot_image1 TEXT,
    medium_screenshot_image2 TEXT,
    medium_screenshot_image3 TEXT,
    large_screenshot_image1 TEXT,
    large_screenshot_image2 TEXT,
    large_screenshot_image3 TEXT,
    cast_names TEXT,                       -- space-joined cast names, for full-text search
    -- bookkeeping
    raw TEXT NOT NULL,                     -- the movie's list JSON as received (compact)
    raw_details TEXT,                      -- the movie_details JSON as received (compact)
    list_hash TEXT,                        -- hash of the list JSON without swarm counts
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    removed_at TEXT                        -- NULL while the movie is present upstream
);
CREATE INDEX IF NOT EXISTS movies_imdb_code ON movies(imdb_code);
CREATE INDEX IF NOT EXISTS movies_year ON movies(year);
CREATE INDEX IF NOT EXISTS movies_rating ON movies(rating);
CREATE INDEX IF NOT EXISTS movies_date_uploaded_unix ON movies(date_uploaded_unix);

CREATE TABLE IF NOT EXISTS torrents (
    hash TEXT PRIMARY KEY,                 -- upper case info hash
    movie_id INTEGER NOT NULL REFERENCES movies(id),
    url TEXT,
    quality TEXT,
    type TEXT,
    is_repack INTEGER,
    video_codec TEXT,
    bit_depth INTEGER,
    audio_channels TEXT,
    seeds INTEGER,
    peers INTEGER,
    size TEXT,
    size_bytes INTEGER,
    date_uploaded TEXT,
    date_uploaded_unix INTEGER,
    magnet TEXT,
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    removed_at TEXT
);

CREATE TABLE IF NOT EXISTS movie_genres (
    movie_id INTEGER NOT NULL REFERENCES movies(id),
    genre TEXT NOT NULL,
    PRIMARY KEY (movie_id, genre)
);
CREATE INDEX IF NOT EXISTS movie_genres_genre ON movie_genres(genre);

CREATE VIRTUAL TABLE IF NOT EXISTS movies_fts USING fts5(
    title, title_english, description_full, cast_names,
    content='movies', content_rowid='id'
);
-- A row here, only ever inside a writer's transaction, pauses movies_fts_ai: the list sync
-- indexes a page's new movies in one statement, several times faster than row by row.
CREATE TABLE IF NOT EXISTS fts_batch (
    active INTEGER PRIMARY KEY
);
CREATE TRIGGER IF NOT EXISTS movies_fts_ai AFTER INSERT ON movies
WHEN NOT EXISTS (SELECT 1 FROM fts_batch)
BEGIN
    INSERT INTO movies_fts(rowid, title, title_english, description_full, cast_names)
    VALUES (new.id, new.title, new.title_english, new.description_full, new.cast_names);
END;
CREATE TRIGGER IF NOT EXISTS movies_fts_ad AFTER DELETE ON movies BEGIN
    INSERT INTO movies_fts(movies_fts, rowid, title, title_english, description_full, cast_names)
    VALUES ('delete', old.id, old.title, old.title_english, old.description_full, old.cast_names);
END;
CREATE TRIGGER IF NOT EXISTS movies_fts_au AFTER UPDATE OF title, title_english, description_full, cast_names ON movies
WHEN old.title IS NOT new.title OR old.title_english IS NOT new.title_english
  OR old.description_full IS NOT new.description_full OR old.cast_names IS NOT new.cast_names
BEGIN
    INSERT INTO movies_fts(movies_fts, rowid, title, title_english, description_full, cast_names)
    VALUES ('delete', old.id, old.title, old.title_english, old.description_full, old.cast_names);
    INSERT INTO movies_fts(rowid, title, title_english, description_full, cast_names)
    VALUES (new.id, new.title, new.title_english, new.description_full, new.cast_names);
END;

-- Enrichment tables. Each movie's child rows are replaced whole on re-enrichment.
CREATE TABLE IF NOT EXISTS movie_cast (
    movie_id INTEGER NOT NULL REFERENCES movies(id),
    position INTEGER NOT NULL,
    imdb_code TEXT,
    name TEXT,
    character_name TEXT,
    url_small_image TEXT,
    PRIMARY KEY (movie_id, position)
);
CREATE INDEX IF NOT EXISTS movie_cast_name ON movie_cast(name);

CREATE TABLE IF NOT EXISTS movie_suggestions (
    movie_id INTEGER NOT NULL REFERENCES movies(id),
    position INTEGER NOT NULL,
    suggested_id INTEGER NOT NULL,         -- may name a movie not mirrored yet
    PRIMARY KEY (movie_id, position)
);

CREATE TABLE IF NOT EXISTS movie_reviews (
    movie_id INTEGER NOT NULL REFERENCES movies(id),
    position INTEGER NOT NULL,
    username TEXT,
    user_rating INTEGER,
    user_location TEXT,
    review_summary TEXT,
    review_text TEXT,
    date_written TEXT,
    date_written_unix INTEGER,
    PRIMARY KEY (movie_id, position)
);

CREATE TABLE IF NOT EXISTS movie_parental_guides (
    movie_id INTEGER NOT NULL REFERENCES movies(id),
    position INTEGER NOT NULL,
    type TEXT,
    parental_guide_text TEXT,
    PRIMARY KEY (movie_id, position)
);

CREATE TABLE IF NOT EXISTS movie_comments (
    movie_id INTEGER NOT NULL REFERENCES movies(id),
    position INTEGER NOT NULL,
    comment_id INTEGER,
    user_id INTEGER,
    username TEXT,
    user_profile_url TEXT,
    small_user_avatar_image TEXT,
    medium_user_avatar_image TEXT,
    user_group TEXT,
    like_count INTEGER,
    comment_text TEXT,
    date_added TEXT,
    date_added_unix INTEGER,
    PRIMARY KEY (movie_id, position)
);

-- Enrichment backlog: one row per (movie, endpoint) once attempted.
CREATE TABLE IF NOT EXISTS enrich_state (
    movie_id INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,                  -- ok | not_found | failed
    fetched_at TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,   -- failed fetches in a row (0 once answered)
    last_error TEXT,
    list_hash TEXT,                        -- movies.list_hash when fetched
    attempted_at TEXT,                     -- the last fetch, whatever its outcome
    PRIMARY KEY (movie_id, endpoint)
);

-- Endpoints paused after consecutive failures; probed once by the next run.
CREATE TABLE IF NOT EXISTS endpoint_state (
    endpoint TEXT PRIMARY KEY,
    paused_at TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

-- Swarm history: one row per torrent per full refresh.
CREATE TABLE IF NOT EXISTS torrent_stats (
    hash TEXT NOT NULL,
    observed_at TEXT NOT NULL,
    seeds INTEGER,
    peers INTEGER,
    PRIMARY KEY (hash, observed_at)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS sync_runs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,                    -- full | incremental | enrich
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,                  -- running | ok | failed | interrupted
    base_url TEXT,
    pages INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    movies_new INTEGER NOT NULL DEFAULT 0,
    movies_updated INTEGER NOT NULL DEFAULT 0,
    movies_removed INTEGER NOT NULL DEFAULT 0,
    torrents_new INTEGER NOT NULL DEFAULT 0,
    torrents_removed INTEGER NOT NULL DEFAULT 0,
    enriched INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    warning TEXT                           -- what the run held back on purpose (version 3)
);

-- Checkpoints (JSON values), written in the same transaction as the page they follow.
CREATE TABLE IF NOT EXISTS sync_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE VIEW IF NOT EXISTS movie_torrents AS
SELECT m.id AS movie_id, m.title, m.year, t.quality, t.type, t.video_codec, t.size,
       t.size_bytes, t.seeds, t.peers, t.hash, t.magnet, t.removed_at
FROM torrents t JOIN movies m ON m.id = t.movie_id;

-- The YTS-compatible API (mirror/api.py, issue 6). The movies rows are wide (raw JSON), so
-- list_movies filters and sorts the present movies from one narrow covering index instead;
-- the others serve its quality, genre and cast filters and the seeds/peers sorts.
CREATE INDEX IF NOT EXISTS movies_api_present ON movies(
    id, removed_at, rating, year, like_count, download_count, title, imdb_code
) WHERE removed_at IS NULL;
CREATE INDEX IF NOT EXISTS torrents_api_movie ON torrents(movie_id, removed_at, quality, seeds, peers);
CREATE INDEX IF NOT EXISTS torrents_api_quality ON torrents(quality COLLATE NOCASE, movie_id) WHERE removed_at IS NULL;
CREATE INDEX IF NOT EXISTS movie_genres_api_genre ON movie_genres(genre COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS movie_cast_api_name ON movie_cast(name COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS movie_cast_api_imdb_code ON movie_cast(imdb_code COLLATE NOCASE);

-- ---- Browsing (Datasette, `yts-mirror serve`) ----------------------------------------------
-- Indexes behind the catalog facets.
CREATE INDEX IF NOT EXISTS movies_language ON movies(language);
CREATE INDEX IF NOT EXISTS movies_mpa_rating ON movies(mpa_rating);
CREATE INDEX IF NOT EXISTS torrents_present_quality ON torrents(quality, movie_id) WHERE removed_at IS NULL;

-- One slim row per movie (removed ones too): what the catalog page lists.
CREATE VIEW IF NOT EXISTS movie_catalog AS
SELECT id, medium_cover_image AS cover, title, year, rating, runtime, genres, language, mpa_rating,
       date_uploaded_unix, removed_at
FROM movies;

-- Full-text search, ranked: SELECT * FROM movie_search WHERE fts MATCH 'heist' ORDER BY rank.
-- Query it only with a MATCH on fts: without one, rank is NULL and every movie is scanned.
CREATE VIEW IF NOT EXISTS movie_search AS
SELECT m.id, m.medium_cover_image AS cover, m.title, m.year, m.rating, m.runtime, m.genres, m.language,
       m.mpa_rating, m.date_uploaded_unix, m.removed_at, f.rank AS rank, f.movies_fts AS fts
FROM movies_fts f JOIN movies m ON m.id = f.rowid;

-- Who plays in what (filled by enrichment).
CREATE VIEW IF NOT EXISTS movie_actors AS
SELECT c.name AS actor, c.character_name, c.imdb_code AS actor_imdb_code, m.id AS movie_id, m.title, m.year,
       m.rating, m.removed_at
FROM movie_cast c JOIN movies m ON m.id = c.movie_id;

-- Enrichment progress per endpoint, over the movies still present upstream.
CREATE VIEW IF NOT EXISTS enrich_backlog AS
WITH endpoints(endpoint) AS (
    SELECT 'movie_details' UNION SELECT 'movie_suggestions' UNION SELECT 'movie_reviews'
    UNION SELECT 'movie_parental_guides' UNION SELECT endpoint FROM enrich_state
),
present AS (SELECT COUNT(*) AS n FROM movies WHERE removed_at IS NULL),
done AS (
    SELECT e.endpoint, e.status, COUNT(*) AS n
    FROM enrich_state e JOIN movies m ON m.id = e.movie_id AND m.removed_at IS NULL
    GROUP BY e.endpoint, e.status
)
SELECT p.endpoint,
       COALESCE((SELECT n FROM done d WHERE d.endpoint = p.endpoint AND d.status = 'ok'), 0) AS ok,
       COALESCE((SELECT n FROM done d WHERE d.endpoint = p.endpoint AND d.status = 'not_found'), 0) AS not_found,
       COALESCE((SELECT n FROM done d WHERE d.endpoint = p.endpoint AND d.status = 'failed'), 0) AS failed,
       (SELECT n FROM present)
         - COALESCE((SELECT SUM(n) FROM done d WHERE d.endpoint = p.endpoint AND d.status IN ('ok', 'not_found')), 0)
         AS pending,
       s.paused_at, s.consecutive_failures, s.last_error
FROM endpoints p LEFT JOIN endpoint_state s ON s.endpoint = p.endpoint;
