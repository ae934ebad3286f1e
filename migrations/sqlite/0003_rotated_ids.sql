-- 0003: rotated-away session ids, kept in storage so that every store, and a store after a
-- restart, recognises a replayed old token (kRotatedTokenReused). A row lives until the session
-- it belonged to would have expired (its absolute cap); the purges delete it then. It is not a
-- session: nothing lists, counts or validates it.
-- No IF NOT EXISTS: a table of this name that pylon did not create makes the migration fail
-- instead of being taken for ours.
CREATE TABLE _pylon_rotated_ids (
  id          TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 64),
  replaced_by TEXT    NOT NULL,
  user_id     TEXT    NOT NULL,
  tenant_id   TEXT,
  rotated_at  INTEGER NOT NULL,
  expires_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX _pylon_rotated_ids_by_expiry ON _pylon_rotated_ids (expires_at);
