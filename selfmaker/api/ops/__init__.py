"""Control-plane operations, one module per resource family; see :mod:`selfmaker.api.registry`."""
