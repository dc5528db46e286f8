"""The wire format: every message of the chat sockets (``protocol``) and of the control channel
(``ctlprotocol``), typed, validated as it decodes, encoded the one way docs/protocol.md
specifies. Imports nothing of the broker: clients, room-ctl and the bench import it alone."""
