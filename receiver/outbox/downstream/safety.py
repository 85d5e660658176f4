"""Where deliveries may go: http(s) URLs only, and by default only public addresses.

An endpoint URL is the company's, but whoever holds the admin token could point one at
signback's own network (a metadata service, a database's HTTP port) and read the answer
excerpts in the attempt log. So, unless ``SIGNBACK_ENDPOINT_ALLOW_PRIVATE`` is on:

- a URL must name a host whose addresses are all public: not loopback, private,
  link-local, unique-local, multicast, unspecified, reserved or shared (CGNAT), nor an IPv6
  form of one (IPv4-mapped, 6to4, Teredo);
- and this is checked on the *resolved* addresses at every connection, by the HTTP client's
  resolver (:meth:`OutboundPolicy.resolve`), which then connects to a checked address
  itself, with the original name for the ``Host`` header and TLS. A name that resolved to a
  public address when the endpoint was created and to 127.0.0.1 later (DNS rebinding) is
  refused at send time, not connected to.

``SIGNBACK_ENDPOINT_ALLOWED_HOSTS`` adds an allow-list of host names (``api.example.com``,
or ``*.example.com`` for its subdomains); with it, no other host is accepted. Redirects are
never followed (the client does not know how), so a 3xx cannot lead elsewhere either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_URL_CHARS = 2000

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeAddress(Exception):
    """A delivery was refused before connecting: the reason says why."""


def address_problem(address: Address) -> str | None:
    """Why no delivery may go to ``address`` by default, or None for a public address."""
    refused = refused_address(address)
    return None if refused is None else f"{refused[0]} is {refused[1]}"


def refused_address(address: Address) -> tuple[Address, str] | None:
    """The address that is refused (``address``, or the IPv4 address inside it) and what it
    is (``"a loopback address"``), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in (address.ipv4_mapped, address.sixtofour):
            if embedded is not None:
                return refused_address(embedded)
        if address.teredo is not None:
            return refused_address(address.teredo[1])
    for flag, what in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_multicast", "a multicast"),
        ("is_unspecified", "an unspecified"),
        ("is_private", "a private"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(address, flag):
            return address, f"{what} address"
    if not address.is_global:
        return address, "not a public address"
    return None


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def host_name_problem(host: str) -> str | None:
    """Why ``host`` cannot be a DNS name (an empty or over-long label, or over 253
    characters), or None. Caught here, the mistake gets a 422 rather than a dead delivery
    that says only that the name does not resolve."""
    labels = host.removesuffix(".").split(".")
    if len(host.removesuffix(".")) > 253:
        return "must have a host name of at most 253 characters"
    if any(not label for label in labels):
        return f"host {host} has an empty label (two dots in a row, or a leading dot)"
    if any(len(label) > 63 for label in labels):
        return f"host {host} has a label longer than 63 characters"
    return None


def ip_literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class OutboundPolicy:
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()  # lower case; "*.example.com" for subdomains

    def url_problem(self, url: str) -> str | None:
        """Why ``url`` cannot be an endpoint (without resolving it), or None."""
        if len(url) > MAX_URL_CHARS:
            return f"must be at most {MAX_URL_CHARS} characters"
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
            return "must not contain spaces or control characters"
        if not url.isascii():
            return "must be ASCII (percent-encode the path; punycode for the host name)"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises for a port that is no number or out of range)
        except ValueError as exc:
            return f"is not a valid URL: {exc}"
        if parts.scheme not in ("http", "https"):
            return "must start with http:// or https://"
        if not parts.hostname:
            return "must name a host"
        if parts.port == 0:
            return "must not use port 0 (no server listens there)"
        if ip_literal(parts.hostname) is None and (problem := host_name_problem(parts.hostname)):
            return problem
        if parts.username is not None or parts.password is not None:
            return (
                "must not carry credentials (user:password@): the signature proves "
                "that signback sent the delivery"
            )
        if parts.fragment or url.endswith("#"):
            return "must not have a #fragment (it is never sent)"
        if "://" in target_of(parts):
            return "must not contain '://' in its path or query (percent-encode it: %3A//)"
        host = parts.hostname
        if self.allowed_hosts and not host_allowed(host, self.allowed_hosts):
            return (
                f"host {host} is not in SIGNBACK_ENDPOINT_ALLOWED_HOSTS "
                f"({', '.join(self.allowed_hosts)})"
            )
        literal = ip_literal(host)
        if literal is not None and not self.allow_private:
            problem = address_problem(literal)
            if problem is not None:
                return f"{problem} (set SIGNBACK_ENDPOINT_ALLOW_PRIVATE=true to allow it)"
        return None

    async def resolved_problem(self, url: str) -> str | None:
        """Why ``url``'s host is refused once resolved (creation-time feedback; the same
        check runs again at every connection), or None."""
        if self.allow_private:
            return None
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or default_port(parts.scheme)
        try:
            await self.resolve(host, port)
        except UnsafeAddress as exc:
            return str(exc)
        return None

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``, all of them checked; raises
        :class:`UnsafeAddress` (with the reason) if the host is not allowed, does not
        resolve, or any address it resolves to is not."""
        if self.allowed_hosts and not host_allowed(host, self.allowed_hosts):
            raise UnsafeAddress(f"host {host} is not in SIGNBACK_ENDPOINT_ALLOWED_HOSTS")
        literal = ip_literal(host)
        if literal is not None:
            addresses: list[str] = [str(literal)]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise UnsafeAddress(f"host {host} does not resolve: {exc}") from exc
            except UnicodeError as exc:
                # The idna codec's refusal of a name no DNS can hold (an endpoint stored
                # before url_problem checked its labels): a refusal, not a crash.
                raise UnsafeAddress(f"host {host} is not a valid host name ({exc})") from exc
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if not addresses:
                raise UnsafeAddress(f"host {host} does not resolve")
        if not self.allow_private:
            for text in addresses:
                refused = refused_address(ipaddress.ip_address(text.split("%", 1)[0]))
                if refused is not None:
                    # Every address is checked: a name with one public and one private
                    # address must not reach the private one on a retry.
                    address, what = refused
                    if literal is not None:  # not "127.0.0.1 resolves to 127.0.0.1"
                        found = f"{address} is {what}"
                    elif str(address) == text:
                        found = f"{host} resolves to {text}, which is {what}"
                    else:  # an IPv4 address inside an IPv6 one
                        found = f"{host} resolves to {text}, which holds {address}: {what}"
                    raise UnsafeAddress(
                        f"{found} (deliveries go to public addresses only unless"
                        " SIGNBACK_ENDPOINT_ALLOW_PRIVATE=true)"
                    )
        return addresses


def default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def target_of(parts: SplitResult) -> str:
    """The request target: path (``/`` when empty) and query."""
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
