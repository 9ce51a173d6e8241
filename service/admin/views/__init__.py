"""The dashboard's pages, one module each.

A page module has a ``router`` (an ``APIRouter`` whose paths are relative to ``/admin``) and a
``NAV`` entry: ``(path, label)`` for the menu, or ``None`` for pages reached only by links.
Adding a page is that module plus one line in :data:`PAGES` (the menu follows its order);
``tests/service/admin/test_admin_pages.py`` fails for a module left out.
"""

from __future__ import annotations

from service.admin.views import audit, jobs, login, models, overview, requests, subjects, webhooks

PAGES = (login, overview, requests, jobs, models, subjects, audit, webhooks)
