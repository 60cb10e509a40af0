"""Where a job's callback may go. A callback URL is the client's choice and the service POSTs
to it from inside its network, so it must not reach what only the service can: link-local
addresses (169.254.0.0/16, fe80::/10), where cloud metadata services hand out credentials,
and the metadata host names. The host is checked when the job is created and every address
it resolves to is checked again when the callback is sent (a name can resolve elsewhere by
then); redirects are never followed (a redirect is a second URL nobody checked)."""

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

BLOCKED_NETWORKS = tuple(ip_network(net) for net in (
    "169.254.0.0/16",      # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata
    "fe80::/10",           # IPv6 link-local
    "fd00:ec2::254/128",   # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
))
BLOCKED_NAMES = frozenset((
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.internal", "metadata.tencentyun.com",
))


def refuse_host(host: str) -> str | None:
    """Why a callback may not go to `host` (a name or an address literal), or None."""
    name = host.strip("[]").rstrip(".").lower()
    if name in BLOCKED_NAMES or name.endswith(".metadata.google.internal"):
        return f"{host} is a cloud metadata host"
    try:
        address: IPv4Address | IPv6Address = ip_address(name.split("%", 1)[0])
    except ValueError:
        return None
    return refuse_address(address)


def refuse_address(address: IPv4Address | IPv6Address) -> str | None:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in BLOCKED_NETWORKS):
        return f"{address} is a link-local or metadata address"
    return None


class CheckedResolver(AbstractResolver):
    """The system resolver, refusing a name any of whose addresses is blocked: the addresses
    checked are the ones connected to."""

    def __init__(self) -> None:
        self.resolver = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        reason = refuse_host(host)
        if reason:
            raise OSError(f"callback refused: {reason}")
        results = await self.resolver.resolve(host, port, family)
        for result in results:
            reason = refuse_host(result["host"])
            if reason:
                raise OSError(f"callback refused: {host} resolves to {reason}")
        return results

    async def close(self) -> None:
        await self.resolver.close()


def open_callback_session(timeout_s: float = 5.0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=CheckedResolver(), use_dns_cache=False)
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 connector=connector)


async def post_callback(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    """POST `body` once; any answer but 2xx (a redirect included) is a failure."""
    host = aiohttp.client.URL(url).host or ""
    # aiohttp connects to an address literal without asking the resolver.
    reason = refuse_host(host)
    if reason:
        raise ValueError(f"callback refused: {reason}")
    async with session.post(url, json=body, allow_redirects=False) as response:
        if not 200 <= response.status < 300:
            raise ValueError(f"callback answered HTTP {response.status}"
                             + (" (redirects are not followed)"
                                if 300 <= response.status < 400 else ""))
