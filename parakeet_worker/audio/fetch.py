"""Download an ``audio_url`` to a temp file, with the URL policy enforced where it cannot be dodged.

Three gates, each on what the client really uses (url_policy.py explains the first):
1. ``check_url`` on the encoded URL of every hop (redirects are followed here, one at a time);
2. the resolver checks every address a host name resolves to;
3. the connector's socket factory checks the address of every socket right before it connects,
   IP literals included (aiohttp skips the resolver for those), so nothing reaches a refused
   address even if the first two gates were fooled.
A refusal names the rule, never the address. The temp file is removed on any failure, including
cancellation of the job.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from parakeet_worker.audio.url_policy import NOT_PUBLIC, Target, address_allowed, check_url
from parakeet_worker.config.errors import AUDIO_TOO_LARGE, DOWNLOAD_FAILED, FORBIDDEN_URL, ASRError

REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class DownloadPolicy:
    max_bytes: int
    timeout_s: float
    max_redirects: int
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, s) -> DownloadPolicy:
        """The worker's policy (MAX_AUDIO_BYTES, DOWNLOAD_TIMEOUT_S, MAX_REDIRECTS, ...), for every route."""
        return cls(s.max_audio_bytes, s.download_timeout_s, s.max_redirects, s.allow_private_urls, s.allowed_url_hosts)


class _Guard:
    """The policy for the hop in flight, shared by the resolver and the socket factory. A refusal
    is remembered here (aiohttp wraps whatever they raise) and reported by ``download``."""

    def __init__(self, policy: DownloadPolicy):
        self.policy = policy
        self.target: Target | None = None
        self.refused: str | None = None

    def check(self, address: str) -> None:
        if self.target is None or not address_allowed(address, self.target, allow_private=self.policy.allow_private):
            self.refused = self.refused or "the URL's host " + NOT_PUBLIC
            raise OSError(errno.EACCES, "refused by the URL policy")

    def socket_factory(self, addr_info) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        self.check(sockaddr[0])  # the very address this socket will connect to
        return socket.socket(family, type_, proto)


class _PolicyResolver:
    """aiohttp resolver: every address a name resolves to must pass, not only the first."""

    def __init__(self, guard: _Guard):
        self.guard = guard

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror:
            raise OSError(errno.EHOSTUNREACH, "could not resolve the host") from None
        for info in infos:
            self.guard.check(info[4][0])
        return [
            {
                "hostname": host,
                "host": info[4][0],
                "port": info[4][1],
                "family": info[0],
                "proto": info[2],
                "flags": socket.AI_NUMERICHOST,
            }
            for info in infos
        ]

    async def close(self) -> None:
        return None


async def download(url: str, policy: DownloadPolicy) -> Path:
    """Fetch ``url`` to a temp file the caller deletes, following at most ``max_redirects``
    redirects, each through the same three gates, with the size limit enforced while streaming."""
    import aiohttp

    guard = _Guard(policy)
    timeout = aiohttp.ClientTimeout(total=policy.timeout_s, sock_connect=min(10.0, policy.timeout_s))
    path: Path | None = None
    try:
        connector = aiohttp.TCPConnector(
            resolver=_PolicyResolver(guard), use_dns_cache=False, limit=4, socket_factory=guard.socket_factory
        )
        # auto_decompress off: a gzip body would otherwise be inflated past what we count
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, trust_env=False, auto_decompress=False
        ) as session:
            for _ in range(policy.max_redirects + 1):
                guard.target = check_url(
                    url, None, allow_private=policy.allow_private, allowed_hosts=policy.allowed_hosts
                )
                async with session.get(
                    guard.target.url, allow_redirects=False, headers={"Accept-Encoding": "identity"}
                ) as resp:
                    if resp.status in REDIRECTS:
                        url = _next_hop(resp)
                        continue
                    if resp.status != 200:
                        raise ASRError(DOWNLOAD_FAILED, f"the server answered HTTP {resp.status}")
                    declared = resp.content_length
                    if declared is not None and declared > policy.max_bytes:
                        raise ASRError(
                            AUDIO_TOO_LARGE, f"the file is {declared} bytes; the limit is {policy.max_bytes}"
                        )
                    fd, name = tempfile.mkstemp(prefix="asr-dl-")
                    path = Path(name)
                    with os.fdopen(fd, "wb") as f:
                        size = 0
                        async for block in resp.content.iter_chunked(1 << 16):
                            size += len(block)
                            if size > policy.max_bytes:
                                raise ASRError(
                                    AUDIO_TOO_LARGE, f"the download passed the {policy.max_bytes} byte limit"
                                )
                            f.write(block)
                    return path
            raise ASRError(DOWNLOAD_FAILED, f"more than {policy.max_redirects} redirects")
    except BaseException as exc:  # cancellation included: never leave a partial download behind
        if path is not None:
            path.unlink(missing_ok=True)
        if guard.refused is not None and not isinstance(exc, asyncio.CancelledError):
            raise ASRError(FORBIDDEN_URL, guard.refused) from None
        if isinstance(exc, (ASRError, asyncio.CancelledError)) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, asyncio.TimeoutError):
            raise ASRError(DOWNLOAD_FAILED, f"the download timed out after {policy.timeout_s:.0f} s") from None
        # any other network failure is the user's download failing; say what kind, no details
        raise ASRError(DOWNLOAD_FAILED, f"could not fetch the URL ({type(exc).__name__})") from None


def _next_hop(resp) -> str:
    location = resp.headers.get("Location")
    if not location:
        raise ASRError(DOWNLOAD_FAILED, f"redirect ({resp.status}) without a Location")
    try:
        return str(resp.url.join(URL(location)))
    except (ValueError, UnicodeError, TypeError):
        raise ASRError(DOWNLOAD_FAILED, "redirect to an invalid URL") from None
