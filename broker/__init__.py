"""room's broker, in layers; each folder says what it owns and what it may import.

- ``wire``: the protocol (client and control messages, encode and decode). Imports nothing of the
  broker; the clients import it too.
- ``chat``: the chat's rules, pure code (no sockets, no clock, no store implementation).
- ``store``: where messages, rooms, names, access and the audit log live.
- ``security``: key files, who may connect (ZAP), room keys.
- ``admin``: the admin verbs (a table room-ctl reads, and their handlers on the chat).
- ``loop``: the sockets and the one thread that owns them; it drives everything above.
- ``backbone``: several brokers as one chat over NATS JetStream (only with ``--backbone``).

Beside them: ``cli`` (room-broker), ``options`` (its options' env vars), ``config`` (defaults and
limits, one place), ``logfmt`` (the log's lines).
"""
