"""The I/O layer: the sockets (``sockets``) and the one thread that owns them (``server.Broker``),
which reads the ROUTER (``intake``) and the control socket (``control``), hands what comes to the
chat, and sends what a turn produced (``flush``, the PUB's sends through ``publisher``'s thread);
``door`` counts each connection as it is accepted, or shuts it (on the ZAP thread), ``watch`` is
the guard's thread that evicts one that breaks its budget, and ``descriptors`` keeps connections
from taking its last file descriptors. A backbone plugs in through ``plugin``'s
protocols; ``metrics`` serves what the broker counts to Prometheus (``--metrics``). The only layer
that imports zmq sockets, and of the broker the only one that imports prometheus_client; it may
import every other layer."""
