"""Network addresses in a spec, checked at the door by the API server's CEL (`isIP`, `isCIDR`: Kubernetes
>= 1.31, the charts' minimum) and the same way by pydantic, for whoever reads an object without the API
server's word (the agent, the operator's judgement). A pattern alone let 999.1.1.1/99 through to nft."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, Field

from maculaos.api.common import DNS_SUBDOMAIN_PATTERN

CIDR_PATTERN = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9a-fA-F:]+/[0-9]{1,3})$"
NETWORK_MESSAGE = "must be a network in CIDR form without host bits, such as 10.0.0.0/8 or fd00::/64"
HOST_MESSAGE = "must be an IP address (such as 127.0.0.1 or ::1) or a DNS name (such as db.lan)"
ENDPOINT_MESSAGE = "must be a DNS name or an IPv4 address, then an optional :port, such as minio.lan:9000"
_DIGITS_AND_DOTS = r"^[0-9.]+$"


def _network(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} {NETWORK_MESSAGE}") from exc
    return text


def is_ip_address(text: str) -> bool:
    """An IPv4 or IPv6 address, not a name: one test for the address fields here and for the diagnostics,
    which look up only the names among their endpoints."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _dns_name(text: str) -> bool:
    """A DNS name, not a would-be IPv4 address (1.2.3, 999.1.1.1) that is none."""
    return bool(re.fullmatch(DNS_SUBDOMAIN_PATTERN, text.lower())) and not re.fullmatch(_DIGITS_AND_DOTS, text)


def _host(text: str) -> str:
    if not (is_ip_address(text) or _dns_name(text)):
        raise ValueError(f"{text!r} {HOST_MESSAGE}")
    return text


def _endpoint(text: str) -> str:
    host = text.split(":")[0]
    if not (_dns_name(host) or (is_ip_address(host) and ":" not in host)):
        raise ValueError(f"{text!r}: {ENDPOINT_MESSAGE}")
    return text



def _rule(rule: str, message: str) -> dict[str, list[dict[str, str]]]:
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


Network = Annotated[str, Field(pattern=CIDR_PATTERN, max_length=43, json_schema_extra=_rule(
    "isCIDR(self) && cidr(self) == cidr(self).masked()", NETWORK_MESSAGE)), AfterValidator(_network)]
"""An IPv4 or IPv6 network (CIDR), host bits zero: what nft takes as a source."""

Host = Annotated[str, Field(max_length=253, pattern=r"^[A-Za-z0-9.:-]+$", json_schema_extra=_rule(
    f"isIP(self) || (self.lowerAscii().matches(r'{DNS_SUBDOMAIN_PATTERN}') && !self.matches('{_DIGITS_AND_DOTS}'))",
    HOST_MESSAGE)), AfterValidator(_host)]
"""An IP address or a DNS name to connect to."""

Endpoint = Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$", max_length=253, json_schema_extra=_rule(
    f"!self.split(':')[0].matches('{_DIGITS_AND_DOTS}') || isIP(self.split(':')[0])", ENDPOINT_MESSAGE)),
    AfterValidator(_endpoint)]
"""host[:port] of a service, the host a DNS name or an IPv4 address."""
