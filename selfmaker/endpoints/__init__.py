"""Live endpoints: instance pools, variants, routing (runtime.py) and their lifecycle (manager.py)."""
