"""Dependencies that follow the function (``Executor(deps=True)``; docs/dependencies.md).

Client side: ``find`` (the modules a function needs, from its bytecode,
globals and closures), ``dists`` (which distribution, the standard library or
the user's files provides each), ``pack`` (the environment's key and its
wheel set, a plain tar packed once), ``client`` (per function, the
environment's key, with what runs imported before). Node side: ``source``
(a wheel set by key: the seam the data layer plugs into), ``build`` (the
environment built once per node). ``nodecheck`` is a node-side probe for
tests and benchmarks.
"""
