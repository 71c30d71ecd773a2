"""The address types refuse in pydantic what the CRDs' CEL (isCIDR, isIP) refuses at the API server
(tests/integration/test_schema_rejects.py), so an object read without the API server is judged the same."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from maculaos.api.addresses import Endpoint, Host, Network

NETWORK, HOST, ENDPOINT = TypeAdapter(Network), TypeAdapter(Host), TypeAdapter(Endpoint)


@pytest.mark.parametrize("adapter, good", [
    (NETWORK, "10.0.0.0/8"), (NETWORK, "192.168.1.5/32"), (NETWORK, "fd00::/64"), (NETWORK, "::/0"),
    (HOST, "127.0.0.1"), (HOST, "::1"), (HOST, "fe80::1"), (HOST, "db.lan"), (HOST, "DB.Lan"),
    (ENDPOINT, "192.168.1.5:9000"), (ENDPOINT, "s3.amazonaws.com"), (ENDPOINT, "minio.lan:9000"),
])
def test_good_addresses_pass(adapter: TypeAdapter[str], good: str) -> None:
    assert adapter.validate_python(good) == good


@pytest.mark.parametrize("adapter, bad", [
    (NETWORK, "999.1.1.1/8"), (NETWORK, "10.0.0.1/8"), (NETWORK, "10.0.0.0/33"), (NETWORK, "1:2:3:4:5:6:7:8:9/64"),
    (NETWORK, "010.0.0.0/8"), (NETWORK, "10.0.0.0"),
    (HOST, "999.1.1.1"), (HOST, "10.1.2"), (HOST, "1::2::3"), (HOST, "-db.lan"),
    (ENDPOINT, "300.1.1.1:9000"), (ENDPOINT, "10.1.2"),
])
def test_bad_addresses_are_refused(adapter: TypeAdapter[str], bad: str) -> None:
    with pytest.raises(ValidationError):
        adapter.validate_python(bad)
