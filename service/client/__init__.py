"""Clients and their tokens (DESIGN §10): admin routes ``/v1/clients`` and ``/v1/tokens``."""
