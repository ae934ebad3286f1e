-- 0001: the session table, and the adoption of a table written by pylon's runtime.
--
-- `id` is the lowercase hex SHA-256 of the token; the token itself is never stored.
-- `expires_at` is the effective expiry (min of the absolute cap and the idle deadline), so a
-- purge is one indexed DELETE. `absolute_expires_at` is the cap that sliding never passes.
CREATE TABLE IF NOT EXISTS _pylon_sessions (
  id                  TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 64),
  user_id             TEXT    NOT NULL,
  tenant_id           TEXT,
  created_at          INTEGER NOT NULL,
  expires_at          INTEGER NOT NULL,
  last_seen_at        INTEGER NOT NULL,
  absolute_expires_at INTEGER NOT NULL DEFAULT 0,
  device              TEXT,
  ip                  TEXT,
  data                BLOB    NOT NULL DEFAULT x''
) STRICT;

CREATE INDEX IF NOT EXISTS _pylon_sessions_by_user ON _pylon_sessions (user_id);
CREATE INDEX IF NOT EXISTS _pylon_sessions_by_expiry ON _pylon_sessions (expires_at);

-- pylon's runtime kept raw tokens as the primary key of its own `_pylon_sessions`. Before this
-- migration runs, the library renames such a table to `_pylon_sessions_pylon_v0` (and adds the
-- `tenant_id` column that early pylon versions lacked). Every unexpired row moves here under
-- the hash of its token, keeping its expiry as both the effective expiry and the absolute cap;
-- expired rows are dropped. On a fresh database the table below is created empty, so this
-- statement block is a no-op. The library then VACUUMs with secure_delete on, so no raw token
-- survives in the file.
CREATE TABLE IF NOT EXISTS _pylon_sessions_pylon_v0 (
  token      TEXT PRIMARY KEY,
  user_id    TEXT NOT NULL,
  expires_at INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  device     TEXT,
  tenant_id  TEXT
);

INSERT INTO _pylon_sessions
  (id, user_id, tenant_id, created_at, expires_at, last_seen_at, absolute_expires_at, device)
SELECT pylon_sha256_hex(token), user_id, tenant_id, created_at, expires_at, created_at,
       expires_at, device
  FROM _pylon_sessions_pylon_v0
 WHERE expires_at > unixepoch() AND token IS NOT NULL AND user_id IS NOT NULL
ON CONFLICT (id) DO NOTHING;

DROP TABLE _pylon_sessions_pylon_v0;
