"""Shared model parts: the backbones and the quick profile's local network."""
