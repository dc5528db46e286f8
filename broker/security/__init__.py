"""Who may connect and who may read: the CURVE key files of the data dir (``keys``), the ZAP
handler (``zap``), the admin allow-list and each domain's checks (``guard``) with the connection
caps (``gate``), and the room keys that seal each room's PUB sends (``roomkeys``, which the
client's keyring imports too). May import ``broker.wire``, ``broker.config`` and
``broker.stoppipe``; nothing of the chat, the store or the loop."""
