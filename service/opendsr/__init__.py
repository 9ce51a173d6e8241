"""OpenDSR processor endpoints (DESIGN §12): erasure requests from upstream request managers."""
