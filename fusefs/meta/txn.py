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
from contextlib import AbstractContextManager, contextmanager

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
            with self._joined():
                yield
        elif self.pending:
            with self._savepoint():
                yield
            self.commit_pending()
        else:
            with self._atomic("BEGIN IMMEDIATE", ("ROLLBACK",), ("COMMIT",)):
                yield

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Statements that may wait for the next commit (batching: a created file's rows
        commit with its first chunk at close, one commit instead of two). Atomic like a
        transaction; `commit_pending` (or any later `transaction`) commits them. For what
        no promise covers until a later call commits it (a create, before its close)."""
        if self._depth:
            with self._joined():
                yield
            return
        if not self.pending:
            self.db.execute("BEGIN IMMEDIATE")
            self.pending = True
        with self._savepoint():
            yield

    @contextmanager
    def _joined(self) -> Iterator[None]:
        """A body inside an outer transaction's: committed (or undone) with it."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def _savepoint(self) -> AbstractContextManager[None]:
        """A body inside the pending transaction: undone alone if it fails."""
        return self._atomic("SAVEPOINT body", ("ROLLBACK TO body", "RELEASE body"),
                            ("RELEASE body",))

    @contextmanager
    def _atomic(self, begin: str, undo: tuple[str, ...], done: tuple[str, ...]
                ) -> Iterator[None]:
        self.db.execute(begin)
        self._depth = 1
        try:
            yield
        except BaseException:
            for sql in undo:
                self.db.execute(sql)
            raise
        else:
            for sql in done:
                self.db.execute(sql)
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
