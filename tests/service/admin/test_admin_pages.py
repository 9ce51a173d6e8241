"""The dashboard's page registry: every module under ``service/admin/views`` is registered and has
a router and a menu entry (or none, said explicitly); token checks stay in ``service.client.tokens``.
(The menu as shown: ``test_admin_views.test_the_menu_is_the_registered_pages_in_order``.)"""

from __future__ import annotations

import re
from pathlib import Path

from service.admin import views

ADMIN = Path(views.__file__).resolve().parents[1]


def test_every_page_module_is_registered_once():
    modules = {p.stem for p in (ADMIN / "views").glob("*.py") if p.stem != "__init__"}
    registered = [page.__name__.rsplit(".", 1)[-1] for page in views.PAGES]
    assert sorted(registered) == sorted(modules)  # a page module left out of PAGES is never mounted
    assert len(set(registered)) == len(registered)


def test_every_page_has_a_router_and_says_whether_it_is_in_the_menu():
    for page in views.PAGES:
        assert page.router.routes, page.__name__
        assert page.NAV is None or (isinstance(page.NAV, tuple) and page.NAV[0].startswith("/")), page.__name__


def test_the_dashboard_has_no_token_check_of_its_own():
    """Sign-in and sessions go through ``service.client.tokens`` (the API's lookup): nothing in the
    dashboard reads the tokens table or hashes a token itself."""
    for path in ADMIN.rglob("*.py"):
        src = path.read_text()
        assert not re.search(r"\bApiToken\b|\btoken_hash\b|\bhash_token\b|hashlib\.sha256\(.*token", src), path.name
    assert "principal_for_token" in (ADMIN / "auth.py").read_text()
