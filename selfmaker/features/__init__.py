"""Endpoint features, one package each: ``serverless``, ``shadow``, ``capture``, ``guardrails``,
``async_inference``.

A feature's ``__init__`` holds its registrations (the decorators of :mod:`selfmaker.api.registry`); its
other modules hold its code. Features may import :mod:`selfmaker.endpoints`, :mod:`selfmaker.api` and the
lower layers, and each other without cycles; nothing outside ``features/`` imports a feature, except the
``selfmaker status`` command, which reads what features stored. See docs/platform-internals.md.
"""
