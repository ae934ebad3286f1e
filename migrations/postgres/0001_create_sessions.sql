-- 0001: the session table, and the adoption of a table written by pylon's runtime.
--
-- Column for column the SQLite schema (migrations/sqlite/0001_create_sessions.sql): TEXT for
-- text, BIGINT for Unix seconds, BYTEA for `data`, so both backends hold the same values.
-- `id` is the lowercase hex SHA-256 of the token; the token itself is never stored.
-- `expires_at` is the effective expiry (min of the absolute cap and the idle deadline), so a
-- purge is one indexed DELETE. `absolute_expires_at` is the cap that sliding never passes.
--
-- The library runs this file inside one transaction that holds an advisory lock, together with
-- the row recording it in `_pylon_schema_migrations`: two instances starting at once apply it
-- once, and a failure leaves the database as it was.
CREATE TABLE IF NOT EXISTS _pylon_sessions (
  id                  TEXT   NOT NULL PRIMARY KEY CHECK (length(id) = 64),
  user_id             TEXT   NOT NULL,
  tenant_id           TEXT,
  created_at          BIGINT NOT NULL,
  expires_at          BIGINT NOT NULL,
  last_seen_at        BIGINT NOT NULL,
  absolute_expires_at BIGINT NOT NULL DEFAULT 0,
  device              TEXT,
  ip                  TEXT,
  data                BYTEA  NOT NULL DEFAULT ''::bytea
);

CREATE INDEX IF NOT EXISTS _pylon_sessions_by_user ON _pylon_sessions (user_id);
CREATE INDEX IF NOT EXISTS _pylon_sessions_by_expiry ON _pylon_sessions (expires_at);

-- pylon's runtime kept raw tokens as the primary key of its own `_pylon_sessions`. Before this
-- migration runs, the library renames such a table to `_pylon_sessions_pylon_v0` (and adds the
-- `tenant_id` column that early pylon versions lacked), in the same transaction. Every
-- unexpired row moves here under the hash of its token, keeping its expiry as both the
-- effective expiry and the absolute cap; expired rows are dropped. On a fresh database the
-- table below is created empty, so this block is a no-op. The casts accept pylon tables whose
-- integer columns are INTEGER rather than BIGINT. sha256() is built in since PostgreSQL 11.
--
-- Dropping the table removes its files at commit. The raw tokens may still sit in WAL segments
-- (until the server recycles them) and in base backups or WAL archives taken before: rotate
-- those as any secret that was stored in the clear.
CREATE TABLE IF NOT EXISTS _pylon_sessions_pylon_v0 (
  token      TEXT PRIMARY KEY,
  user_id    TEXT NOT NULL,
  expires_at BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  device     TEXT,
  tenant_id  TEXT
);

INSERT INTO _pylon_sessions
  (id, user_id, tenant_id, created_at, expires_at, last_seen_at, absolute_expires_at, device)
SELECT encode(sha256(convert_to(token::text, 'UTF8')), 'hex'), user_id::text, tenant_id::text,
       created_at::bigint, expires_at::bigint, created_at::bigint, expires_at::bigint,
       device::text
  FROM _pylon_sessions_pylon_v0
 WHERE expires_at > extract(epoch FROM now()) AND token IS NOT NULL AND user_id IS NOT NULL
ON CONFLICT (id) DO NOTHING;

DROP TABLE _pylon_sessions_pylon_v0;
