"""The store: two SQLite files in WAL mode (the store and its command ledger), and the one
module that owns each of their tables.

=================  ====================================================================
module             what it owns
=================  ====================================================================
``schema``         the connection (WAL, synchronous level, the ledger file attached), migrations
``db``             the transaction helper every writer uses
``writer``         the group-commit writer thread: the running gateway's store file writer
``ledger_writer``  the command ledger file's writer thread, waited for inline
``registry``       ``devices``: tokens (hashed), labels, metadata, stream position
``operators``      ``operators``: operator tokens (hashed) and roles
``readings``       ``readings`` and ``events``: inserts, history reads, deletes
``retention``      the hourly retention task (old rows, never past a sink's cursor)
``ledger``         ``commands`` and ``command_states`` (the ledger file): the command ledger
``delivery``       ``cursors``, ``forwarder_state``, ``dead_letters``: sink progress
=================  ====================================================================

Nothing here imports a plane above it (device, operator, integrations, cli).
"""

from gateway.store.schema import SCHEMA_VERSION, connect

__all__ = ["SCHEMA_VERSION", "connect"]
