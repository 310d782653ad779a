"""The HTTP API of `selfmaker up`: control plane (JSON 1.1) and runtime (rest-json) on one port — transport
only: routes, validation, error rendering, the registry of hooks; operations in :mod:`selfmaker.api.ops`."""
