-- 0006: fewer pages written per write (issue 17). With synchronous=NORMAL a commit costs what it
-- writes to the WAL, a page per b-tree page it changed; bench/pylon_bench's `writes` section
-- measured each change below. Nothing a Session holds changes.
--
-- 1. Expiry is indexed by the hour, not by the second. A slide moves `expires_at` on every
--    write, and with it an entry of `_pylon_sessions_by_expiry` (two more pages per slide).
--    `expiry_hour` (expires_at / 3600) changes about once an hour of a session's use; the purges
--    ask `expiry_hour <= now / 3600 AND expires_at <= now`, reading at most an hour's worth of
--    rows that are not yet due. Two triggers keep `expiry_hour` right for every writer (the
--    library, sessionctl, a hand-written statement); they do nothing when it already is.
-- 2. The change log drops AUTOINCREMENT (its `sqlite_sequence` row was one more page per write)
--    and its index on `logged_at` (another). Positions stay unique and increasing: SQLite gives a
--    new row the largest position plus one, and pruning never deletes the newest row, so the
--    largest position never goes back. Pruning walks the log from its oldest row instead of the
--    index. When every row had been pruned, the newest position handed out is kept as a row with
--    the empty id (no session has it: a store applying it changes nothing).
--
-- The triggers of 0004 are dropped first and made again unchanged: a table their bodies name is
-- rebuilt in between.
DROP TRIGGER _pylon_sessions_log_insert;
DROP TRIGGER _pylon_sessions_log_update;
DROP TRIGGER _pylon_sessions_log_delete;
DROP TRIGGER _pylon_rotated_ids_log_insert;
DROP TRIGGER _pylon_rotated_ids_log_update;

ALTER TABLE _pylon_sessions ADD COLUMN expiry_hour INTEGER NOT NULL DEFAULT 0;
UPDATE _pylon_sessions SET expiry_hour = expires_at / 3600;
DROP INDEX _pylon_sessions_by_expiry;
CREATE INDEX _pylon_sessions_by_expiry_hour ON _pylon_sessions (expiry_hour);

CREATE TABLE _pylon_change_log_0006 (
  position   INTEGER PRIMARY KEY,
  id         TEXT    NOT NULL,
  logged_at  INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
) STRICT;

INSERT INTO _pylon_change_log_0006 (position, id, logged_at)
SELECT position, id, logged_at FROM _pylon_change_log;

INSERT INTO _pylon_change_log_0006 (position, id)
SELECT seq, '' FROM sqlite_sequence
 WHERE name = '_pylon_change_log'
   AND seq > (SELECT coalesce(max(position), 0) FROM _pylon_change_log);

DROP TABLE _pylon_change_log;
ALTER TABLE _pylon_change_log_0006 RENAME TO _pylon_change_log;

CREATE TRIGGER _pylon_sessions_expiry_hour_insert AFTER INSERT ON _pylon_sessions
WHEN NEW.expiry_hour IS NOT NEW.expires_at / 3600
BEGIN
  UPDATE _pylon_sessions SET expiry_hour = NEW.expires_at / 3600 WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER _pylon_sessions_expiry_hour_update AFTER UPDATE OF expires_at ON _pylon_sessions
WHEN NEW.expiry_hour IS NOT NEW.expires_at / 3600
BEGIN
  UPDATE _pylon_sessions SET expiry_hour = NEW.expires_at / 3600 WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER _pylon_sessions_log_insert AFTER INSERT ON _pylon_sessions
BEGIN
  INSERT INTO _pylon_change_log (id) VALUES (NEW.id);
END;

CREATE TRIGGER _pylon_sessions_log_update AFTER UPDATE ON _pylon_sessions
BEGIN
  INSERT INTO _pylon_change_log (id) VALUES (NEW.id);
  INSERT INTO _pylon_change_log (id) SELECT OLD.id WHERE OLD.id IS NOT NEW.id;
END;

CREATE TRIGGER _pylon_sessions_log_delete AFTER DELETE ON _pylon_sessions
BEGIN
  INSERT INTO _pylon_change_log (id) VALUES (OLD.id);
END;

CREATE TRIGGER _pylon_rotated_ids_log_insert AFTER INSERT ON _pylon_rotated_ids
BEGIN
  INSERT INTO _pylon_change_log (id) VALUES (NEW.id);
END;

CREATE TRIGGER _pylon_rotated_ids_log_update AFTER UPDATE ON _pylon_rotated_ids
BEGIN
  INSERT INTO _pylon_change_log (id) VALUES (NEW.id);
END;
