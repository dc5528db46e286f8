"""The admin's verbs: their table (``verbs``: pure data, which room-ctl reads without loading
the chat) and their handlers on the chat (``commands``). May import ``broker.wire``,
``broker.chat`` and ``broker.store.base``; nothing of the loop or its sockets."""
