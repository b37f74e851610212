"""`Store`: the one API of the store over both backends, composed of its parts:

    core.py         connections and transactions (StoreCore; the backends' hooks)
    writer.py       durable accepts, group-committed (GroupCommitWriter)
    queue.py        claim, complete in one transaction, fail, read (MessageQueue)
    outbox_rows.py  the outbox table (OutboxTables)
    records.py      orders, suggestions, worklist, feedback, audit, subscriptions, purge

A backend (sqlite.py, postgres.py) subclasses `Store` with connections and claim queries."""

from __future__ import annotations

from radproto.adapter.store.queue import MessageQueue
from radproto.adapter.store.records import Records
from radproto.adapter.store.writer import GroupCommitWriter


class Store(GroupCommitWriter, MessageQueue, Records):
    """The backend-independent store. Subclasses supply connections and the claim queries."""
