"""The HTTP API of `selfmaker up`: control plane (JSON 1.1) and runtime (rest-json) on one port."""
