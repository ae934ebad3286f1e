-- 0005: when the user last proved who they are, and a session's own idle timeout.
--
-- Column for column the SQLite migration (migrations/sqlite/0005_authentication_and_lifetimes.sql),
-- with BIGINT for seconds. `authenticated_at` is set at create, when a user is attached to an
-- anonymous session and on re-authentication; sessions stored before this migration take their
-- created_at (they were created at login). Anonymous sessions (an empty user_id) hold 0.
-- `idle_timeout_seconds` is the idle timeout a session was created with ("remember me"); NULL
-- means the store's StoreOptions::idle_timeout, as every session before this migration had.
--
-- PostgreSQL only: `id` takes the collation "C". An administrator's listing pages by id in byte
-- order (`id COLLATE "C" > cursor ORDER BY id COLLATE "C"`), as SQLite's BINARY orders it,
-- whatever the database's collation; the primary key's index serves that walk only when it is
-- in the same collation, else every page reads and sorts the whole table. Ids are lowercase hex,
-- so no comparison changes meaning: equality is byte equality in every deterministic collation.
-- The column's bytes stay as they are (no table rewrite); the primary key's index is rebuilt.
--
-- The UPDATE rewrites every row and goes through migration 0004's triggers (each row logged
-- once). The library runs this file inside one transaction that holds an advisory lock, together
-- with the row recording it in `_pylon_schema_migrations`: like 0002, the first start of this
-- version pauses other instances while it runs.
ALTER TABLE _pylon_sessions ADD COLUMN authenticated_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE _pylon_sessions ADD COLUMN idle_timeout_seconds BIGINT;
ALTER TABLE _pylon_sessions ALTER COLUMN id TYPE TEXT COLLATE "C";
UPDATE _pylon_sessions SET authenticated_at = created_at WHERE user_id <> '';
