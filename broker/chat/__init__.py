"""The chat's rules, with no sockets: who is who (``sessions``), rooms and their history
(``rooms``), private rooms (``privaterooms``), what a user says (``posting``), what other brokers
report (``shared``), each an object over the shared ``state``, behind the façade ``chat.Chat``
that fills an ``Outbox`` (``outbox``) per batch. May import ``broker.wire``, ``broker.config``
and the store's interface and data (``broker.store.base``, ``broker.store.access``), never a
store's implementation; nothing of ``broker.loop``, sockets or zmq."""
