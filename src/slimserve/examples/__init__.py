"""Bundled examples: models and data that need no download."""
