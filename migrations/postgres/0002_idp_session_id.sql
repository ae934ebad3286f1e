-- 0002: the identity provider's session id (OIDC `sid`), for back-channel logout by `sid`.
--
-- Column for column the SQLite migration (migrations/sqlite/0002_idp_session_id.sql). A nullable
-- column without a default is added to the catalog only: no row is rewritten, existing sessions
-- read NULL. The partial index holds only sessions that have a `sid`, so an application without
-- OIDC pays nothing for it.
--
-- The library runs this file inside one transaction that holds an advisory lock, together with
-- the row recording it in `_pylon_schema_migrations`. ALTER TABLE locks `_pylon_sessions`
-- exclusively until that transaction commits, so other instances wait (reads included) while
-- the index is built: on a table of millions of rows, the first start of this version pauses
-- the others for about one index build.
ALTER TABLE _pylon_sessions ADD COLUMN idp_session_id TEXT;

CREATE INDEX IF NOT EXISTS _pylon_sessions_by_idp_session
  ON _pylon_sessions (idp_session_id) WHERE idp_session_id IS NOT NULL;
