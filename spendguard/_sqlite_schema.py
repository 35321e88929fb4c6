"""The tables behind :class:`spendguard.sqlite.SQLiteLedger`, and the statements it runs.

One row of ``spendguard_accounts`` per account (keyed by the provider's ``account_id``,
which never contains the key):

- ``balance`` and ``balance_at``: the snapshot and when its lookup began (``NULL`` before
  the first lookup); ``fetched_at``: the same time while the snapshot may be trusted,
  ``NULL`` once invalidated;
- ``spent``: spending recorded since the lookup began; ``held``: the sum of the open
  holds' amounts; ``lookups``: finished lookups (a waiter that sees it change uses the
  new snapshot);
- ``next_expiry``: no later than the earliest expiry of an open hold (``NULL``: none), so
  that a transaction looks for expired holds only when one may be due;
- ``lease_token`` and ``lease_until``: the process looking the balance up, and until when
  it may (the refresh lease: the lookup itself runs outside any transaction);
- ``failure`` and ``failure_until``: the error of the last failed lookup, as JSON, shared
  with every process until then.

One row of ``spendguard_holds`` per open hold: its ``amount``, ``expires_at`` (when it
stops blocking others unless renewed) and ``deadline`` (from the guard's ``hold_ttl``;
``NULL``: none). A process pushes ``expires_at`` of its own holds back while it lives;
``expires_at`` never passes ``deadline``.

The holds have no index beside their id: an index is a second B-tree to write with every
hold taken and ended (about 20 µs each, measured with ``benchmarks/ledger.py``), while the
scan for expired holds runs only when the account's ``next_expiry`` is due, over the few
holds that are open at once.

``spendguard_meta`` holds ``boot``: which boot of the machine the stored times belong to
(see ``spendguard.sqlite``); after a reboot no process that held anything is alive, so
every hold is dropped and every snapshot forgotten.

Amounts are integers in units of 10^-9 of the provider's unit (64-bit in SQLite; the
Python side keeps every value within range, see ``spendguard.sqlite``); times are
seconds (``REAL``) of the ledger's clock.
"""

from __future__ import annotations

VERSION = 1
"""``PRAGMA user_version`` of a database with these tables."""

CREATE = (
    """CREATE TABLE IF NOT EXISTS spendguard_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS spendguard_accounts (
        account TEXT PRIMARY KEY,
        balance INTEGER,
        balance_at REAL,
        fetched_at REAL,
        spent INTEGER NOT NULL DEFAULT 0,
        held INTEGER NOT NULL DEFAULT 0,
        lookups INTEGER NOT NULL DEFAULT 0,
        next_expiry REAL,
        lease_token TEXT,
        lease_until REAL,
        failure TEXT,
        failure_until REAL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS spendguard_holds (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        amount INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        deadline REAL
    ) WITHOUT ROWID""",
    f"PRAGMA user_version = {VERSION}",
)

ACCOUNT_COLUMNS = (
    "balance",
    "balance_at",
    "fetched_at",
    "spent",
    "held",
    "lookups",
    "next_expiry",
    "lease_token",
    "lease_until",
    "failure",
    "failure_until",
)

SELECT_ACCOUNT = f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM spendguard_accounts WHERE account = ?"
INSERT_ACCOUNT = "INSERT OR IGNORE INTO spendguard_accounts (account) VALUES (?)"
UPDATE_ACCOUNT = (
    f"UPDATE spendguard_accounts SET {', '.join(f'{c} = ?' for c in ACCOUNT_COLUMNS)} "
    "WHERE account = ?"
)

SELECT_DUE = (
    "SELECT id, amount FROM spendguard_holds WHERE account = ? AND expires_at <= ? "
    "ORDER BY expires_at LIMIT 256"
)
DELETE_HOLD = "DELETE FROM spendguard_holds WHERE id = ?"
NEXT_EXPIRY = "SELECT MIN(expires_at) FROM spendguard_holds WHERE account = ?"
INSERT_HOLD = (
    "INSERT INTO spendguard_holds (id, account, amount, expires_at, deadline) "
    "VALUES (?, ?, ?, ?, ?)"
)
END_HOLD = (
    "UPDATE spendguard_accounts SET held = held - COALESCE("
    "(SELECT amount FROM spendguard_holds WHERE id = :hold AND account = :account), 0), "
    "spent = MIN(spent + :spent, :cap) WHERE account = :account"
)
DELETE_OWN_HOLD = "DELETE FROM spendguard_holds WHERE id = ? AND account = ?"
RENEW_HOLD = (
    "UPDATE spendguard_holds SET deadline = ?, expires_at = ? "
    "WHERE id = ? AND account = ? AND expires_at > ?"
)
EARLIER_EXPIRY = (
    "UPDATE spendguard_accounts SET next_expiry = MIN(COALESCE(next_expiry, :at), :at) "
    "WHERE account = :account"
)
BEAT_HOLD = (
    "UPDATE spendguard_holds SET expires_at = MIN(COALESCE(deadline, ?), ?) "
    "WHERE id = ? AND expires_at > ?"
)

SELECT_BOOT = "SELECT value FROM spendguard_meta WHERE key = 'boot'"
SET_BOOT = "INSERT OR REPLACE INTO spendguard_meta (key, value) VALUES ('boot', ?)"
FORGET_ALL = (
    "DELETE FROM spendguard_holds",
    "UPDATE spendguard_accounts SET balance = NULL, balance_at = NULL, fetched_at = NULL, "
    "spent = 0, held = 0, next_expiry = NULL, lease_token = NULL, lease_until = NULL, "
    "failure = NULL, failure_until = NULL",
)
