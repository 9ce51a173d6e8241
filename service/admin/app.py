"""The admin dashboard: its own FastAPI app mounted at /admin."""

from __future__ import annotations

from fastapi import FastAPI

from service.core.config import Settings


def create_admin_app(settings: Settings) -> FastAPI:
    admin = FastAPI(title="Lethe admin", docs_url=None, redoc_url=None, openapi_url=None)
    return admin
