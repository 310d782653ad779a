"""Live endpoints: instance pools, variants and routing (runtime.py), one invocation (invoke.py), building
deployments (builder.py), their lifecycle (manager.py) and instance health (health.py); the keep-alive
client to model servers is :mod:`common.http`. Imports nothing of the api or the features."""
