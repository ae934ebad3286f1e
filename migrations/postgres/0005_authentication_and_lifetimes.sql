-- 0005: when the user last proved who they are, and a session's own idle timeout.
--
-- Column for column the SQLite migration (migrations/sqlite/0005_authentication_and_lifetimes.sql),
-- with BIGINT for seconds. `authenticated_at` is set at create, when a user is attached to an
-- anonymous session and on re-authentication; sessions stored before this migration take their
-- created_at (they were created at login). Anonymous sessions (an empty user_id) hold 0.
-- `idle_timeout_seconds` is the idle timeout a session was created with ("remember me"); NULL
-- means the store's StoreOptions::idle_timeout, as every session before this migration had.
--
-- The UPDATE rewrites every row and goes through migration 0004's triggers (each row logged
-- once). The library runs this file inside one transaction that holds an advisory lock, together
-- with the row recording it in `_pylon_schema_migrations`: like 0002, the first start of this
-- version pauses other instances while it runs.
ALTER TABLE _pylon_sessions ADD COLUMN authenticated_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE _pylon_sessions ADD COLUMN idle_timeout_seconds BIGINT;
UPDATE _pylon_sessions SET authenticated_at = created_at WHERE user_id <> '';
