"""Webhooks (DESIGN §12): subscriptions, the event outbox, signed deliveries with retries."""
