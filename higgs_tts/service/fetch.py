"""Fetching what a caller names by URL (a reference clip), without letting the caller reach inside.

Rules (SSRF protection), checked for the first URL and again for every redirect:
- https only, no credentials in the URL;
- every address the host resolves to must be public: loopback, private, link-local (cloud
  metadata at 169.254.169.254 among them), shared, multicast and reserved ranges are refused;
- the connection goes to the address that was checked (the name is not resolved twice), with
  the name kept for the Host header and TLS;
- a host in the allow-list skips both checks: the only way to allow plain http or a private
  address (an S3-compatible store on the local network, a test server on loopback).
The body is streamed: a size cap and one deadline for the whole fetch, redirects included.
`check_url` alone serves other callers (a webhook target).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Collection

import httpx

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(ValueError):
    """A URL refused or a fetch that failed; `code` is the error table's (invalid_input, too_large)."""

    def __init__(self, message: str, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.code = code


def blocked_range(address: Address) -> str | None:
    """Why an address is off limits ("a loopback address"), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        # an IPv4 address carried inside IPv6 (mapped, 6to4 2002::/16) is judged as that IPv4 address
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            address = embedded
    for test, kind in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                       ("is_link_local", "link-local (cloud metadata)"), ("is_multicast", "multicast"),
                       ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(address, test):
            return f"a {kind} address"
    if not address.is_global:
        return "not a public address"
    return None


def resolve(host: str, port: int) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"host {host!r} cannot be resolved ({exc})") from None
    # The scope of a link-local IPv6 address ("fe80::1%eth0") is dropped: such an address is refused anyway.
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def check_url(url: str, allowlist: Collection[str]) -> tuple[httpx.URL, Address]:
    """The parsed URL and the address to connect to; FetchError saying why it is refused."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchError(f"is not a valid URL ({exc})") from None
    host = (target.host or "").lower().rstrip(".")
    if target.scheme not in ("http", "https") or not host:
        raise FetchError("must be an https:// URL")
    if target.userinfo:
        raise FetchError("must not carry credentials (user:password@)")
    allowed = host in {h.lower().rstrip(".") for h in allowlist}
    if target.scheme != "https" and not allowed:
        raise FetchError(f"must use https (plain http only for a host in the allow-list; {host!r} is not)")
    addresses = resolve(host, target.port or (443 if target.scheme == "https" else 80))
    if not addresses:
        raise FetchError(f"host {host!r} has no address")
    if not allowed:
        for address in addresses:
            if reason := blocked_range(address):
                raise FetchError(f"host {host!r} resolves to {address}, {reason}; only public addresses "
                                 "are fetched unless the host is in the allow-list")
    return target, addresses[0]


def pinned(target: httpx.URL, address: Address) -> tuple[httpx.URL, dict[str, str], dict]:
    """The request's URL with the checked address in place of the name, the Host header and the TLS
    name (SNI, certificate) that keep the name: the connection cannot go where the check did not look."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return target.copy_with(host=str(address)), {"Host": target.netloc.decode("ascii")}, extensions


def fetch(url: str, allowlist: Collection[str], max_bytes: int, timeout: float) -> bytes:
    """The body of a GET, following up to MAX_REDIRECTS redirects, each checked like the first.

    FetchError when a URL is refused, the answer is not 200, the body passes `max_bytes`
    (`too_large`), or the whole fetch takes longer than `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        target, address = check_url(url, allowlist)
        to, headers, extensions = pinned(target, address)
        # identity: the body counted against the cap is the body decoded (no gzip inflating past it)
        headers |= {"Accept": "audio/*, */*", "Accept-Encoding": "identity"}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"no complete answer within {timeout:g} s")
        try:
            # trust_env=False: a proxy from the environment would connect by name, past the check
            with httpx.Client(timeout=remaining, follow_redirects=False, trust_env=False) as client, \
                    client.stream("GET", to, headers=headers, extensions=extensions) as response:
                if response.status_code in REDIRECTS and "location" in response.headers:
                    url = str(target.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise FetchError(f"the server answered HTTP {response.status_code}")
                return _body(response, max_bytes, deadline, timeout)
        except httpx.TimeoutException:
            raise FetchError(f"no complete answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"cannot be fetched ({type(exc).__name__}: {exc})") from None
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def _body(response: httpx.Response, max_bytes: int, deadline: float, timeout: float) -> bytes:
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise FetchError(f"the body is {int(length)} bytes, above the limit of {max_bytes} bytes", "too_large")
    body = bytearray()
    for chunk in response.iter_raw():  # each piece as it arrives, so the deadline is checked between them
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(f"the body is above the limit of {max_bytes} bytes", "too_large")
        if time.monotonic() > deadline:
            raise FetchError(f"no complete answer within {timeout:g} s")
    return bytes(body)
