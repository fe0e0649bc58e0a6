"""Where the cluster keeps things in NATS: the buckets, streams and subjects, one list.

docs/CLUSTER.md says who writes and who reads each.
"""

from __future__ import annotations

#: Who is online under which name: name key -> the node and the session (names.py).
NAMES = "zchat_names"
#: With CURVE and trust on first use: name key -> the public key it is bound to, for ever.
OWNERS = "zchat_owners"
#: Each broker's lease: node -> its start time, put again every LEASE_RENEW s; the bucket
#: forgets a lease not renewed for LEASE s, and the brokers count a node silent that long as dead.
LEASES = "zchat_leases"
LEASE = 6.0
LEASE_RENEW = 2.0
#: A broker whose last renewal that worked began longer ago than this fences itself
#: (node.py): before any other broker can count it dead, with a second to spare.
FENCE = LEASE - LEASE_RENEW / 2
#: Addresses turned away for flooding (PROTOCOL.md 8), on every broker: address hex -> the
#: node that banned it and until when (wall clock). Kept an hour at most: a longer cool-off
#: holds on the broker that gave it, and on the others for an hour.
BANS = "zchat_bans"
BAN_TTL = 3600.0
#: The buckets every broker watches, each read whole before it serves (node.py).
WATCHED = (LEASES, NAMES, OWNERS, BANS)
#: Every event on a room's topic, the lobby's too, in the one order all brokers read.
LOG = "zchat_log"
LOG_SUBJECTS = "zchat.log.>"


#: The log's subjects of mailboxes and users (rooms' are "lobby" and "#...": never these).
MAIL_SUBJECT = "zchat.log._mail"
KEPT_SUBJECT = "zchat.log._kept"
TAKEN_SUBJECT = "zchat.log._taken"
KNOWN_SUBJECT = "zchat.log._known"
RECEIPT_SUBJECT = "zchat.log._receipt"
RECEIPT_TAKEN_SUBJECT = "zchat.log._receipt_taken"
#: Several entries, each with its subject above (or its room's), in one message (log.py).
BATCH_SUBJECT = "zchat.log._batch"


def log_subject(room: str) -> str:
    """A room's subject in LOG: '.' and '*' are a NATS subject's own."""
    return "zchat.log." + ("lobby" if room == "*" else room.replace(".", "="))


#: A node's subject for private messages to its users, several in one request, an outcome
#: each in the reply (a broker of before the batches listened on "deliver", one each).
DELIVER = "deliveries"


def node_subject(node: str, what: str) -> str:
    """Where a broker hears what others send its users (`what`: DELIVER, reply); core NATS."""
    return f"zchat.node.{node.encode().hex()}.{what}"
