"""Where what the broker keeps lives: room messages and their numbering, rooms, the blocklist,
sessions, room access and the admin audit log. ``base`` is the ``Store`` interface the chat talks
to (and ``StoreError``, ``AuditEntry``), ``access`` the room access state, ``window`` a room's
newest messages in memory; ``memory.MemoryStore`` keeps everything in process, and
``sqlstore.SQLiteStore`` in a file, with its batch and writer thread (``sqlwriter``) and access
tables (``sqlaccess``) as parts; both hold a ``names.LocalNames`` for name claims and sessions.
``datadir`` opens the data dir (its lock, its database). May import ``broker.wire`` and
``broker.config``; nothing of the chat, the loop, security or sockets."""
