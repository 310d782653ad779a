"""Serverless variants: fast cold starts from a pre-imported template process, scale to zero,
``MaxConcurrency`` throttling and ``MemorySizeInMB`` enforcement for local model servers.

Importing this package is cheap on purpose: :mod:`selfmaker.serverless.template` runs as its own
process and must not drag the platform in.
"""
