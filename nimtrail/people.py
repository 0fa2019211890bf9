"""The person behind a request, as an authenticating proxy in front of nimtrail names them.

An authenticating proxy (oauth2-proxy and the like) signs people in and passes who they
are on in a request header: `X-Forwarded-Email`, else `X-Forwarded-User` by default. Such
a header is only as true as the connection it came on: anyone can send it. So the query
API takes it only from the addresses in `warehouse.trusted_proxies`, and the app only when
`app.trusted_proxy` says that nothing but the proxy can reach it (docs/design.md,
"People behind a proxy").
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping

# oauth2-proxy's names (--set-xauthrequest / --pass-user-headers), in the order asked.
PERSON_HEADERS = ("X-Forwarded-Email", "X-Forwarded-User")
MAX_PERSON_CHARS = 256  # an e-mail address is at most 254


def person_from(headers: Mapping[str, str], names: Iterable[str]) -> tuple[str, str] | None:
    """(header name, person) from the first of `names` the request carries with a usable
    value, or None. A value with control characters is no name anyone signed in with."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        value = (lowered.get(name.lower()) or "").strip()
        if value and value.isprintable() and len(value) <= MAX_PERSON_CHARS:
            return name, value
    return None


def networks(cidrs: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parsed CIDRs (a bare address is a network of one); raises ValueError."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_header_name(name: str) -> bool:
    """An HTTP field name (RFC 9110 token characters)."""
    allowed = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return bool(name) and set(name) <= allowed


class ProxyTrust:
    """Which clients may name the person of a request, and in which headers."""

    def __init__(self, cidrs: Iterable[str], names: Iterable[str]):
        self.networks = networks(cidrs)
        self.names = tuple(names)

    def person(self, headers: Mapping[str, str], client: str) -> str | None:
        """The person the request names, if it came from a trusted proxy; else None (the
        header is ignored, whatever it says)."""
        if not self.networks or not self._trusted(client):
            return None
        found = person_from(headers, self.names)
        return found[1] if found else None

    def _trusted(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # ::ffff:10.0.0.5 on a dual-stack listener
        return any(address in network for network in self.networks)
