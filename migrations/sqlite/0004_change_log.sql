-- 0004: the change log, through which every store sharing this file follows the others' writes.
--
-- Each row says "storage changed what it holds for this id": a session inserted, updated or
-- deleted, or an id rotated away. Triggers write it in the transaction of the change itself, so
-- every writer is covered (every store, sessionctl, a hand-written statement), a rolled-back
-- write logs nothing, and the log never claims a change storage did not make. A store reads the
-- rows after the last position it applied, together with what storage now holds for each id,
-- and makes its cache hold that. `position` is AUTOINCREMENT: SQLite has one writer at a time,
-- so positions are handed out in commit order and never reused, even after pruning.
--
-- Rows older than StoreOptions::change_log_retention are pruned; `_pylon_change_log_state`
-- records the newest position pruned, so that a store whose position was pruned knows to reload
-- every session instead of applying a log with a hole in it.
CREATE TABLE _pylon_change_log (
  position   INTEGER PRIMARY KEY AUTOINCREMENT,
  id         TEXT    NOT NULL,
  logged_at  INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
) STRICT;

CREATE INDEX _pylon_change_log_by_time ON _pylon_change_log (logged_at);

CREATE TABLE _pylon_change_log_state (
  only_row       INTEGER NOT NULL PRIMARY KEY CHECK (only_row = 1),
  pruned_through INTEGER NOT NULL
) STRICT;

INSERT INTO _pylon_change_log_state (only_row, pruned_through) VALUES (1, 0);

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
