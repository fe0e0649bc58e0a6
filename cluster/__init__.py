"""Several brokers as one chat over NATS JetStream (docs/CLUSTER.md).

`zchat broker --cluster nats://...` builds a `ClusterNode` (node.py): the
implementations of the core's seams that hold across brokers (names.py), and
one thread running nats-py on its own asyncio loop (engine.py), linked to the
broker's poll loop by one inproc PAIR socket (link.py).
"""
