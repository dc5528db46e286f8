"""The room chat client: a sans-IO session (``core``), a thin ZeroMQ layer (``connection``), two
front ends (``piped`` for scripts, ``tui`` for people, loaded only when used), ``app.run`` joining
them, the ``room-client`` CLI (``cli``), and ``room-ctl`` (``control``, ``ctl``)."""
