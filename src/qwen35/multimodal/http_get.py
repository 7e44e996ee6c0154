"""An HTTP(S) GET for a media URL that a request names, guarded against server-side request forgery.

The URL comes from whoever sends the request, and the server fetches it from inside its own network, so
without a guard a request could read http://169.254.169.254/ (cloud credentials), http://localhost:... (other
services on the machine) or anything else the server can reach. The rules, each a MediaError naming the URL:
- only http and https, and with `allowed_domains` only those exact host names (vLLM's
  --allowed-media-domains);
- the host is resolved first, and every address it resolves to must be a public internet address: loopback,
  private, link-local, multicast, unspecified, reserved, site-local and other non-global addresses are refused
  unless `allow_private` (IPv4 inside IPv6 -- ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16 -- is judged
  by the IPv4 address it carries). Any bad address refuses the host: an attacker's DNS can return a public
  and a private one and let the connection pick;
- DNS rebinding: the connection goes to the address that was checked, not to the name (which a second lookup
  could answer differently). The URL's host is replaced by that address, and the name travels in the Host
  header and as the TLS server name (httpx's `sni_hostname` extension), so virtual hosts and certificate
  checks still see the name;
- redirects are followed by hand, at most `max_redirects`, and every hop is checked as the first was;
- the body is streamed and abandoned once it passes `max_bytes` (a larger Content-Length is refused before
  reading), and the whole fetch -- lookups, connects, every hop, the body -- must end within `timeout_s`;
- proxies and .netrc from the environment are ignored (`trust_env=False`): a proxy would make the connection
  to an address this module never checked.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import httpx

from .inputs import MediaError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

USER_AGENT = "qwen35-media-fetch"  # some hosts (Wikimedia) refuse requests without a User-Agent of their own
ALLOW_PRIVATE_FLAG = "--allow-private-media-urls"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are an IPv4 address

# getaddrinfo has no timeout of its own (the system resolver's can be tens of seconds): lookups run on these
# threads so that the caller can stop waiting at its deadline. A lookup that hangs keeps its thread until
# the resolver gives up; with all of them busy, later lookups time out instead of piling up threads.
_resolver = ThreadPoolExecutor(max_workers=8, thread_name_prefix="qwen35-media-dns")


def non_public_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public internet address ("a loopback address", ...); None when it is one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return non_public_reason(embedded)
    checks = [("an unspecified", ip.is_unspecified), ("a loopback", ip.is_loopback),
              ("a link-local", ip.is_link_local), ("a multicast", ip.is_multicast),
              ("a site-local", getattr(ip, "is_site_local", False)), ("a private", ip.is_private),
              ("a reserved", ip.is_reserved), ("a non-public", not ip.is_global)]
    return next((f"{name} address" for name, hit in checks if hit), None)


def resolve(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order of preference. OSError when it cannot be
    resolved, TimeoutError after `timeout_s`."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    lookup = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=max(timeout_s, 0.0))
    except FutureTimeout:
        lookup.cancel()
        raise TimeoutError from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])  # fe80::1%eth0: the scope is not ours
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def _shown(url: httpx.URL | str) -> str:
    """The URL for an error message: without user:password, at most ~100 characters."""
    text = str(url.copy_with(userinfo=b"")) if isinstance(url, httpx.URL) and url.userinfo else str(url)
    return text if len(text) <= 100 else f"{text[:80]}... ({len(text)} characters)"


class _Hop:
    """One request of a fetch: the URL as given, the checked addresses to connect to."""

    def __init__(self, url: httpx.URL, what: str) -> None:
        self.url, self.what = url, what
        url.host  # noqa: B018 - decodes IDNA: an invalid xn-- label raises UnicodeError here, not mid-fetch

    def fail(self, why: str) -> MediaError:
        return MediaError(f"{self.what} {_shown(self.url)}: {why}")


def _check(hop: _Hop, *, allow_private: bool, allowed_domains: tuple[str, ...] | None,
           deadline: float, timeout_s: float) -> list[IPAddress]:
    url = hop.url
    if url.scheme not in ("http", "https"):
        raise hop.fail(f"{url.scheme or 'no'} scheme: only http and https URLs are fetched")
    if not url.host:
        raise hop.fail("the URL has no host")
    if allowed_domains is not None and url.host not in allowed_domains \
            and url.raw_host.decode("ascii") not in allowed_domains:
        raise hop.fail(f"{url.host} is not one of the allowed media domains ({', '.join(allowed_domains)}; "
                       "--allowed-media-domains)")
    try:
        addresses = resolve(url.raw_host.decode("ascii"), url.port or (443 if url.scheme == "https" else 80),
                            deadline - time.monotonic())
    except TimeoutError:
        raise hop.fail(f"looking up {url.host} took longer than the {timeout_s:g} s fetch limit") from None
    except (OSError, UnicodeError) as e:  # UnicodeError: a label longer than DNS allows
        raise hop.fail(f"{url.host} cannot be resolved ({getattr(e, 'strerror', None) or e})") from None
    if not addresses:
        raise hop.fail(f"{url.host} resolves to no address")
    if not allow_private:
        for ip in addresses:
            reason = non_public_reason(ip)
            if reason is not None:
                raise hop.fail(f"resolves to {reason} ({ip}); refused (start the server with {ALLOW_PRIVATE_FLAG} "
                               "to fetch from private networks)")
    return addresses


def _get(hop: _Hop, ip: IPAddress, *, max_bytes: int, deadline: float, timeout_s: float) -> tuple[bytes, str | None]:
    """(body, None), or (b"", Location) for a redirect. httpx errors propagate."""
    url = hop.url
    headers = {"Host": url.netloc.decode("ascii"), "User-Agent": USER_AGENT,
               "Accept-Encoding": "identity"}  # media is compressed already; no decompression bombs on top
    # a client per hop: a pooled connection, verified for the previous hop's name, must not carry the next
    with httpx.Client(trust_env=False, follow_redirects=False) as client:
        request = client.build_request("GET", url.copy_with(host=str(ip)), headers=headers,
                                       extensions={"sni_hostname": url.raw_host.decode("ascii")},
                                       timeout=max(deadline - time.monotonic(), 0.001))
        response = client.send(request, stream=True)
        try:
            if response.is_redirect:
                return b"", response.headers["location"]
            if not response.is_success:
                raise hop.fail(f"the server answered {response.status_code} {response.reason_phrase}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise hop.fail(f"is {int(declared):,} bytes (Content-Length), over the limit of {max_bytes:,}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise hop.fail(f"is larger than the limit of {max_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise hop.fail(f"took longer than the {timeout_s:g} s fetch limit")
            return bytes(body), None
        finally:
            response.close()


def download(url: str, *, what: str, max_bytes: int, timeout_s: float, max_redirects: int,
             allow_private: bool = False, allowed_domains: tuple[str, ...] | None = None) -> bytes:
    """The body of `url`, fetched under the rules in the module docstring; MediaError naming `what` (e.g.
    "image") and the URL for everything that goes wrong."""
    deadline = time.monotonic() + timeout_s
    try:
        hop = _Hop(httpx.URL(url), what)
    except (httpx.InvalidURL, TypeError, UnicodeError) as e:
        raise MediaError(f"{what} {_shown(url)}: not a valid URL ({e})") from None
    for _ in range(max_redirects + 1):
        addresses = _check(hop, allow_private=allow_private, allowed_domains=allowed_domains, deadline=deadline,
                           timeout_s=timeout_s)
        for i, ip in enumerate(addresses):  # the next checked address only when this one cannot be reached
            try:
                body, location = _get(hop, ip, max_bytes=max_bytes, deadline=deadline, timeout_s=timeout_s)
                break
            except httpx.ConnectError as e:
                if i == len(addresses) - 1 or time.monotonic() > deadline:
                    raise hop.fail(f"cannot connect ({e})") from None
            except httpx.TimeoutException:
                raise hop.fail(f"took longer than the {timeout_s:g} s fetch limit") from None
            except MediaError:
                raise
            except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as e:  # odd ports, scoped addresses
                raise hop.fail(f"the fetch failed ({type(e).__name__}: {e})") from None
        if location is None:
            return body
        try:
            hop = _Hop(hop.url.join(location), what)
        except (httpx.InvalidURL, UnicodeError) as e:
            raise hop.fail(f"redirects to an invalid URL {location!r} ({e})") from None
    raise MediaError(f"{what} {_shown(url)}: more than {max_redirects} redirects")
