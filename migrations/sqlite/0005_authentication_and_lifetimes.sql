-- 0005: when the user last proved who they are, and a session's own idle timeout.
--
-- `authenticated_at` is set at create, when a user is attached to an anonymous session and on
-- re-authentication; sessions stored before this migration take their created_at (they were
-- created at login). Anonymous sessions (an empty user_id, which this version introduces) hold 0.
-- `idle_timeout_seconds` is the idle timeout a session was created with ("remember me"); NULL
-- means the store's StoreOptions::idle_timeout, as every session before this migration had.
-- The UPDATE goes through migration 0004's triggers: each row is logged once, so stores of the
-- previous version that follow the log re-read it (harmlessly).
ALTER TABLE _pylon_sessions ADD COLUMN authenticated_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE _pylon_sessions ADD COLUMN idle_timeout_seconds INTEGER;
UPDATE _pylon_sessions SET authenticated_at = created_at WHERE user_id <> '';
