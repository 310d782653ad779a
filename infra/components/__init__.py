"""infra/components package."""
