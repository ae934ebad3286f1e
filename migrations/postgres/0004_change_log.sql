-- 0004: the change log, through which every store sharing this database follows the others'
-- writes. Column for column the SQLite migration (migrations/sqlite/0004_change_log.sql), with
-- BIGINT for positions and Unix seconds.
--
-- Each row says "storage changed what it holds for this id": a session inserted, updated or
-- deleted, or an id rotated away. Triggers write it in the transaction of the change itself, so
-- every writer is covered (every store, sessionctl, a hand-written statement), a rolled-back
-- write logs nothing, and the log never claims a change storage did not make. A statement-level
-- trigger then sends NOTIFY _pylon_change_log, which PostgreSQL delivers to every listening
-- store when the transaction commits (once per transaction: identical notifications are
-- merged), so a store wakes at once and reads the log after the last position it applied.
--
-- Positions come from an identity column: they are handed out when a row is logged, not when
-- its transaction commits, so a reader may see position 12 before 11 is committed (or 11 may
-- never be, when its transaction rolls back). Stores keep such gaps and read them again for a
-- while (see internal/change_feed.hpp).
--
-- Rows older than StoreOptions::change_log_retention are pruned; `_pylon_change_log_state`
-- records the newest position pruned, so that a store whose position was pruned knows to reload
-- every session instead of applying a log with a hole in it.
--
-- The library runs this file inside one transaction that holds an advisory lock, together with
-- the row recording it in `_pylon_schema_migrations`.
CREATE TABLE _pylon_change_log (
  position  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id        TEXT   NOT NULL,
  logged_at BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp())::bigint)
);

CREATE INDEX _pylon_change_log_by_time ON _pylon_change_log (logged_at);

CREATE TABLE _pylon_change_log_state (
  only_row       BOOLEAN NOT NULL PRIMARY KEY CHECK (only_row),
  pruned_through BIGINT  NOT NULL
);

INSERT INTO _pylon_change_log_state (only_row, pruned_through) VALUES (true, 0);

CREATE FUNCTION _pylon_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO _pylon_change_log (id) VALUES (OLD.id);
  ELSE
    INSERT INTO _pylon_change_log (id) VALUES (NEW.id);
    IF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
      INSERT INTO _pylon_change_log (id) VALUES (OLD.id);
    END IF;
  END IF;
  RETURN NULL;
END
$$;

CREATE FUNCTION _pylon_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('_pylon_change_log', '');
  RETURN NULL;
END
$$;

CREATE TRIGGER _pylon_sessions_log AFTER INSERT OR UPDATE OR DELETE ON _pylon_sessions
  FOR EACH ROW EXECUTE FUNCTION _pylon_log_change();

CREATE TRIGGER _pylon_rotated_ids_log AFTER INSERT OR UPDATE ON _pylon_rotated_ids
  FOR EACH ROW EXECUTE FUNCTION _pylon_log_change();

CREATE TRIGGER _pylon_change_log_notify AFTER INSERT ON _pylon_change_log
  FOR EACH STATEMENT EXECUTE FUNCTION _pylon_notify_change();
