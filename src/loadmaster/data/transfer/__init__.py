"""Peer-to-peer transfers of declared files between nodes (see ``docs/data.md``).

``protocol``: the wire (a challenge, an HMAC-signed JSON request, a JSON
answer, then raw bytes); ``server``: a node's (or the submitter's) transfer
server, serving ready and still-arriving cache entries and declared files;
``peer``: :class:`PeerFetcher`, the node side pulling into its cache and
resuming from another holder; ``planner``: the client's choice of source and
the per-source/per-destination limits.
"""
