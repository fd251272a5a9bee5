"""The corpus package."""
