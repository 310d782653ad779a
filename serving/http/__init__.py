"""serving/http package."""
