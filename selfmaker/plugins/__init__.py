"""Platform extensions: every module here is imported by ``selfmaker up`` and scanned for the
decorators of :mod:`selfmaker.api.registry` (pool factories, endpoint hooks, runtime routes, lifecycle
hooks). Put ``selfmaker/plugins/<feature>.py`` here and keep the feature's code in your own modules.
"""
