"""Live endpoints: instance pools, variants and routing (runtime.py), one invocation (invoke.py), building
deployments (builder.py), their lifecycle (manager.py), instance health (health.py) and the keep-alive
client to model servers (upstream.py). Imports nothing of the api or the features."""
