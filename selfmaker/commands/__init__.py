"""Sub-commands of the `selfmaker` CLI that belong to the platform."""
