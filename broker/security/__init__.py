"""Who may connect and who may read: the CURVE key files of the data dir (``keys``), the ZAP
handler and admin allow-list (``guard``) with its connection caps (``gate``), and the room keys
that seal each room's PUB sends (``roomkeys``, which the client's keyring imports too). May
import ``broker.wire`` and ``broker.config``; nothing of the chat, the store or the loop."""
