"""Declared files and the node's content-addressed cache (see ``docs/data.md``).

``files``: ``File``/``Output`` (the public face, also inside the task);
``refs``: what crosses the seam (orders down, reports up); ``digest``: content
names and the hash memo; ``cache``: the node's cache; ``fetch``: how a node
gets a digest it lacks; ``stage``: the node runtime's side (inputs in, outputs
out); ``replicas``: the client's table of who holds what (locality); ``transfer``:
peer-to-peer transfers between nodes (servers, the fetcher, the planner).
"""
