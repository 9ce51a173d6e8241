"""Where a delivery may go (SSRF guard). Checked when subscribing and again at each delivery:
only http(s); the host is resolved once and every address must be a public one (loopback,
link-local, private, reserved, multicast and unspecified ranges are refused unless
``webhooks.allow_private_targets``); the caller then connects to the address that was checked,
never resolving again, so a DNS answer that changes in between cannot redirect it."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.core.errors import ProblemError


class UnsafeTarget(ProblemError):
    status, type, title = 422, "unsafe-webhook-url", "URL not allowed as a webhook target"


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]  # the checked IP addresses, to connect to in this order
    path: str  # path and query

    def connect_url(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved or ip.is_multicast
            or ip.is_unspecified or not ip.is_global)


def check_syntax(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) or :class:`UnsafeTarget` (no resolution)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"Not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeTarget(f"Only http and https URLs are allowed, not '{scheme or 'none'}'")
    if not parts.hostname:
        raise UnsafeTarget("The URL has no host")
    if parts.username or parts.password:
        raise UnsafeTarget("Credentials in the URL are not allowed; verify the signature instead")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), path


def resolve(url: str, *, allow_private: bool) -> Target:
    """Resolve once and check every address; :class:`UnsafeTarget` when any is not allowed."""
    scheme, host, port, path = check_syntax(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeTarget(f"The host '{host}' does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise UnsafeTarget(f"The host '{host}' does not resolve")
    if not allow_private:
        for addr in addresses:
            if _forbidden(ipaddress.ip_address(addr.split("%")[0])):
                raise UnsafeTarget(
                    f"The host '{host}' resolves to {addr}, a loopback, link-local, private or reserved address",
                    address=addr,
                )
    return Target(scheme, host, port, tuple(addresses), path)
