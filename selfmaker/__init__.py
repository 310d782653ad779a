"""selfmaker package."""
