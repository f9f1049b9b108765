"""The partner's recommendation service (``fedrec serve``): a gRPC front end over the store's model.

Modules, one concern each: ``settings`` (every serving knob, defined once), ``model_bundle`` (run dir + store
state -> an immutable serving snapshot, and the hot-reload watcher), ``catalog`` (items, text embeddings,
append-only growth), ``retrieval`` (exact / cluster-index candidates, NeuMF re-ranking), ``diversity`` (MMR),
``interaction_log`` (durable click log feeding the next federated round), ``engine`` (the requests, free of
gRPC), ``service`` (the gRPC servicer, health, reflection) and ``cli``.

This package's ``__init__`` and ``interaction_log`` import nothing heavy: the store's training code reads the
log through it.
"""
