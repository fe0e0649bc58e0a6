"""Where the cluster keeps things in NATS: the buckets, streams and subjects, one list.

docs/CLUSTER.md says who writes and who reads each.
"""

from __future__ import annotations

#: Who is online under which name: name key -> the node and the session (names.py).
NAMES = "zchat_names"
#: With CURVE and trust on first use: name key -> the public key it is bound to, for ever.
OWNERS = "zchat_owners"
