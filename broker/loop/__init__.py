"""The I/O layer: the sockets (``sockets``) and the one thread that owns them (``server.Broker``),
which reads the ROUTER (``intake``) and the control socket (``control``), hands what comes to the
chat, and sends what a turn produced (``flush``); ``descriptors`` keeps connections from taking
its last file descriptors. A backbone plugs in through ``plugin``'s
protocols; ``metrics`` serves what the broker counts to Prometheus (``--metrics``). The only layer
that imports zmq sockets, and of the broker the only one that imports prometheus_client; it may
import every other layer."""
