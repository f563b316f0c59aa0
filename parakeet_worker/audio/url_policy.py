"""Which URLs the worker may fetch: one pure decision, no traffic.

The decision is taken on the URL exactly as the HTTP client will use it: the text is parsed by
yarl (the parser aiohttp itself uses) and a non-ASCII host is IDNA-encoded *before* any check, so
``127。0。0。1`` or fullwidth digits are judged as the ``127.0.0.1`` the client would connect to.
``fetch.py`` passes the returned, already-encoded URL to aiohttp, and checks every resolved and
every connected address again with ``address_allowed`` (see docs/SECURITY.md).

Refusals name the rule that was broken, never an internal address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from yarl import URL

from parakeet_worker.config.errors import FORBIDDEN_URL, INVALID_INPUT, ASRError

MAX_URL_LENGTH = 8192
_BLOCKED_NAMES = {"localhost", "metadata", "metadata.google.internal", "instance-data", "kubernetes.default"}
_BLOCKED_SUFFIXES = (".localhost", ".internal", ".local", ".localdomain", ".home.arpa")
# Addresses inside IPv6 that carry an IPv4 address which decides where packets really go.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use translation: never public
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 IPv4-translated
_V4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible (::a.b.c.d), also :: and ::1
# Hosts made only of numbers in any base (2130706433, 0x7f.1, 017700000001): getaddrinfo turns
# them into IPv4 addresses, so they are refused rather than trusted to resolve "normally".
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$")

_HOST_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")  # letters, digits, hyphens (and _), after IDNA
NOT_PUBLIC = (
    "points to an address that is not public (loopback, private, link-local, metadata, "
    "shared or reserved ranges are refused; an operator can allow hosts with ALLOWED_URL_HOSTS)"
)


@dataclass(frozen=True)
class Target:
    """A URL the policy accepted, in the encoded form the client must use unchanged."""

    url: URL  # encoded (``URL(..., encoded=True)`` semantics): aiohttp sends it as is
    host: str  # ASCII, lower case, no trailing dot, IPv6 without brackets
    port: int
    exempt: bool  # allowed by configuration: address checks are skipped for this host


def address_is_public(address: str) -> bool:
    """True only for globally routable unicast addresses: never loopback, private, link-local
    (cloud metadata 169.254.169.254), carrier-grade NAT, multicast, unspecified or reserved, and
    never an IPv6 form whose embedded IPv4 address is one of those."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # a scoped address (fe80::1%eth0) or anything unparsable
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _V4_COMPATIBLE or ip in _V4_TRANSLATED or ip in _NAT64_LOCAL:
            return False
        inner = _embedded_v4(ip)
        if inner is not None and not address_is_public(str(inner)):
            return False
    return ip.is_global and not ip.is_multicast


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_allowed(address: str, target: Target, *, allow_private: bool) -> bool:
    """The check run on every resolved and every connected address of ``target``."""
    return allow_private or target.exempt or address_is_public(address)


def check_url(
    url: str, addresses: list[str] | None = None, *, allow_private: bool = False, allowed_hosts: tuple[str, ...] = ()
) -> Target:
    """Decide whether ``url`` may be fetched and return it as the client must use it.

    ``addresses`` are what its host resolved to (None: not resolved yet; then only the URL itself
    is judged). Raises ASRError(forbidden_url) or ASRError(invalid_input).
    Hosts listed in ``allowed_hosts`` ("host" or "host:port") skip the address checks.
    """
    target = parse_url(url, allowed_hosts)
    if allow_private or target.exempt:
        return target
    host = target.host
    if host in _BLOCKED_NAMES or host.endswith(_BLOCKED_SUFFIXES):
        raise ASRError(FORBIDDEN_URL, "the URL's host is a local or metadata name")
    literal = _as_ip(host)
    if literal is None and _NUMERIC_HOST.match(host):
        raise ASRError(FORBIDDEN_URL, "the URL's host is a number that is not a plain IP address")
    if literal is not None and not address_is_public(literal):
        raise ASRError(FORBIDDEN_URL, "the URL " + NOT_PUBLIC)
    for addr in addresses or []:
        if not address_allowed(addr, target, allow_private=False):
            raise ASRError(FORBIDDEN_URL, "the URL's host " + NOT_PUBLIC)
    return target


def parse_url(url: str, allowed_hosts: tuple[str, ...] = ()) -> Target:
    """Scheme, host and port as the client sees them; the host IDNA-encoded before anything else."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise ASRError(INVALID_INPUT, f"audio_url must be a URL of at most {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ASRError(INVALID_INPUT, "audio_url contains spaces or control characters")
    try:
        # yarl encodes the host with IDNA (UTS 46 mapping: fullwidth digits, ideographic full
        # stops...) exactly as aiohttp will, and percent-encodes the path
        parsed = URL(url)
        scheme = parsed.scheme.lower()
        raw_host = parsed.raw_host
        port = parsed.port
        user, password = parsed.raw_user, parsed.raw_password
    except (ValueError, UnicodeError, TypeError):
        raise ASRError(INVALID_INPUT, "audio_url is not a valid URL") from None
    try:
        # The encoded URL must read back the same: IDNA can map characters onto URL syntax
        # ("［" -> "["), after which the host yarl reports and the text disagree.
        again = URL(str(parsed))
        ambiguous = (again.raw_host, again.port) != (raw_host, port)
    except (ValueError, UnicodeError, TypeError):
        ambiguous = True
    if scheme not in ("http", "https"):
        raise ASRError(FORBIDDEN_URL, "only http and https URLs are allowed")
    if not raw_host:
        raise ASRError(INVALID_INPUT, "audio_url has no host")
    if user or password:
        raise ASRError(FORBIDDEN_URL, "URLs with credentials are not allowed")
    host = raw_host.lower().rstrip(".")
    if ambiguous or not (_HOST_NAME.match(host) or (":" in host and _as_ip(host))):
        # the encoder maps some characters onto URL syntax ("［" -> "["); a zone id (fe80::1%eth0),
        # or anything else that is neither a plain name nor an IP address: never what we checked
        raise ASRError(FORBIDDEN_URL, "the URL's host must be an ASCII name or a plain IP address")
    if port is None or not 0 < port < 65536:
        raise ASRError(INVALID_INPUT, "audio_url has an invalid port")
    exempt = host in allowed_hosts or f"{_bracket(host)}:{port}" in allowed_hosts or f"{host}:{port}" in allowed_hosts
    return Target(url=parsed, host=host, port=port, exempt=exempt)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _as_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None
