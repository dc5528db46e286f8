"""The NATS JetStream backbone: several brokers that act as one chat server.

Imported only with ``--backbone`` (the package itself loads nothing; ``node`` loads nats-py).
The broker's loop stays synchronous and owns its sockets; the NATS client (asyncio) runs on a
thread of its own (``link``). The loop hands work over without waiting and reads what the
backbone reports as events (``events``), once per wake-up. Every broker applies stored messages
(its own and the others') from one ordered consumer of the stream, so each one publishes the same
messages in the same order.

- ``layout``: what lives where in NATS (subjects, buckets), and the timeouts.
- ``events``: what the backbone tells the loop, and a stored message's ``Record``.
- ``link``: the connection and its thread; events go back through a deque and a wake-up pipe.
- ``stream``: room messages: the writer (compare-and-set per room), the consumer, history.
- ``order``: which stored batches count (a clustered stream may store a race's loser), pure.
- ``registry``: names, leases, the blocklist and reset epochs, in key-value buckets.
- ``bus``: admin requests between brokers, direct messages and presence lines.
- ``node``: ``Backbone``, the four together, as the broker sees them.
- ``store``: ``BackboneStore``, what the chat sees of all this: a ``Store``.
- ``routing``: where an admin command runs and how the answers merge (pure).
- ``plugin``: the loop's side: events to the chat, a batch's shares, admin requests.
"""
