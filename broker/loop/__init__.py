"""The I/O layer: the sockets (``sockets``) and the one thread that owns them (``server.Broker``),
which reads the ROUTER (``intake``) and the control socket (``control``), hands what comes to the
chat, and sends what a turn produced (``flush``). A backbone plugs in through ``plugin``'s
protocols. The only layer that imports zmq sockets; it may import every other layer."""
