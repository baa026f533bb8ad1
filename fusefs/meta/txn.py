"""Transactions of a `MetaRepo`: atomic groups of statements, and deferred commits.

A commit costs a WAL append of every page it changed (~40 us for a small file's rows), so
the rows of a created file wait, pending, for the commit of its first chunk at close
(`deferred`): one commit per small file instead of two, and close still returns only after
both are committed. Whatever is pending goes with the next transaction, `commit_pending`,
or `close`; the mount commits it within `PENDING_MAX` seconds at the latest.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

PENDING_MAX = 0.05  # seconds a deferred change may stay uncommitted in a mount


class Transactions:
    """Transactions over `db` (a connection in autocommit mode: isolation_level None)."""

    db: sqlite3.Connection

    def __init__(self) -> None:
        self._depth = 0
        self.pending = False  # a transaction left open by `deferred`, to commit later

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group statements into one atomic commit (nesting joins the outer one). Changes
        left pending by `deferred` are committed with it (a failed body leaves them be)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self.pending:
            with self._savepoint():
                yield
            self.commit_pending()
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._depth = 0

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Statements that may wait for the next commit (batching: a created file's rows
        commit with its first chunk at close, one commit instead of two). Atomic like a
        transaction; `commit_pending` (or any later `transaction`) commits them. For what
        no promise covers until a later call commits it (a create, before its close)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if not self.pending:
            self.db.execute("BEGIN IMMEDIATE")
            self.pending = True
        with self._savepoint():
            yield

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        """A body inside the pending transaction: undone alone if it fails."""
        self.db.execute("SAVEPOINT body")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO body")
            self.db.execute("RELEASE body")
            raise
        else:
            self.db.execute("RELEASE body")
        finally:
            self._depth = 0

    def commit_pending(self) -> None:
        """Commit what `deferred` left pending (nothing to do: nothing done)."""
        if self.pending and not self._depth:
            self.pending = False
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read transaction: every query inside sees the same committed state, whatever
        a writer (a mount beside a direct reader) commits meanwhile. Keep it short: a WAL
        checkpoint of the writer waits for it."""
        self.commit_pending()
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")
