-- 0002: the identity provider's session id (OIDC `sid`), for back-channel logout by `sid`.
-- Runs once: the runner records it in the same transaction.
ALTER TABLE _pylon_sessions ADD COLUMN idp_session_id TEXT;

CREATE INDEX IF NOT EXISTS _pylon_sessions_by_idp_session
  ON _pylon_sessions (idp_session_id) WHERE idp_session_id IS NOT NULL;
