-- The dam inventory and the login sessions. Applied once, on first run, by rusqlite_migration
-- (which records the schema version in PRAGMA user_version).

CREATE TABLE dams (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    river       TEXT    NOT NULL,
    built_on    TEXT    NOT NULL,      -- YYYY-MM-DD
    latitude    REAL    NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude   REAL    NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    added_by    TEXT    NOT NULL,
    added_at    INTEGER NOT NULL       -- unix seconds
);

-- One dam per name, whatever the case.
CREATE UNIQUE INDEX dams_name ON dams (name COLLATE NOCASE);

CREATE TABLE sessions (
    id          TEXT    PRIMARY KEY,   -- 256 random bits, hex
    username    TEXT    NOT NULL,
    csrf_token  TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL       -- unix seconds
);

CREATE INDEX sessions_expiry ON sessions (expires_at);
