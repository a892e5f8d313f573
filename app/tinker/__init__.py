"""Talking to Tinker: its client, types, paths and errors, and a fake of it."""
