"""Endpoint components: the stack's `Gateway` (one ALB) and the endpoints routed through it.

Each module holds one component of type ``selfmaker:endpoints:<Type>``: ``gateway.Gateway``,
``realtime.RealtimeEndpoint`` (instance-backed production variants). Other endpoint kinds add a module
here and route through :meth:`gateway.Gateway.add_route`.
"""
