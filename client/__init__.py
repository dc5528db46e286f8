"""The room chat client: a sans-IO session (``core``), a thin ZeroMQ layer (``connection``), two
front ends (``piped`` for scripts, ``tui`` for people, loaded only when used), ``app.run`` joining
them, the ``room-client`` CLI (``cli``), ``room-ctl`` (``control``, ``ctl``), and the library for
programs (``bot``: a third front end, with ``botevents`` and ``botwaits``)."""
