"""Webhooks: a stored outbox, signed bodies, delivery with retries."""
