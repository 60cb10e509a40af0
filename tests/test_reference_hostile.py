"""Hostile input against the reference service on SQLite and on PostgreSQL (real processes):
text that grows under Unicode normalisation, long and odd callback URLs, NUL bytes, deeply
nested metadata, job ids that are not ids, 10 MB bodies. Whatever the input, the answer is
a client error or a success, never a 500."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import launch_reference_service, wait_until_listening
from .test_reference import API
from .test_reference_bounds import run_admin_statements

CLIENT_ANSWERS = {201, 400, 404, 413, 422}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service_url(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    database = f"perfkit_hostile_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('hostile') / 'research.db'}"
    else:
        asyncio.run(run_admin_statements(f'CREATE DATABASE "{database}"'))
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
    service = wait_until_listening(launch_reference_service("--fast", "--database-url", url))
    yield service.url
    service.stop()
    if request.param == "postgresql":
        asyncio.run(run_admin_statements(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


# Characters that NFKC or case folding turn into several (U+FDFA into 18), a NUL, a lone
# surrogate, combining marks, right-to-left and width variants.
GROWING = "\ufdfa\ufb03\u00df\u0130\u0390\u337f\u2474\ufdfb\uff21"
ODD = GROWING + "\x00\ud800\u0301\u202e a"


def repeated(max_count: int) -> st.SearchStrategy[str]:
    return st.builds(lambda char, count: char * count, st.sampled_from(GROWING),
                     st.integers(1, max_count))


TEXT = st.one_of(repeated(520), st.text(max_size=40),
                 st.text(alphabet=st.sampled_from(ODD), max_size=520))
HOSTS = st.one_of(
    st.sampled_from(["127.0.0.1:9", "example.org", "169.254.169.254", "[fe80::1]",
                     "metadata.google.internal", "2852039166", "[::1]:9", "xn--nxasmq6b.com"]),
    st.text(alphabet=st.sampled_from("\u00e9\u00df.ab-\ufdfa%"), min_size=1, max_size=70))
URLS = st.builds(lambda scheme, host, path: f"{scheme}://{host}/{path}",
                 st.sampled_from(["http", "https", "ftp", "javascript"]), HOSTS,
                 st.one_of(st.text(max_size=100), repeated(2100),
                           st.text(alphabet=st.sampled_from("%\u00e9 a/?#"), max_size=2100)))
ITEMS = st.fixed_dictionaries(
    {"product_name": TEXT, "category": TEXT,
     "price_exact": st.sampled_from([1, 19900.5, 999_999_999.99, 0, -1])},
    optional={"seller_or_store": TEXT, "currency": st.sampled_from(["KRW", "USD", "\x00"]),
              "metadata": st.dictionaries(TEXT, TEXT, max_size=3)})
BODIES = st.fixed_dictionaries(
    {"items": st.lists(ITEMS, min_size=1, max_size=3)},
    optional={"callback_url": URLS, "priority": st.integers(-1, 11)})
# Nesting depth of one item's metadata, put into the JSON text by hand: json.dumps itself
# would stop at Python's recursion limit.
DEPTHS = st.one_of(st.just(0), st.integers(1, 100), st.integers(900, 1100),
                   st.integers(10_000, 200_000))


def encode(body: dict[str, Any], depth: int) -> bytes:
    text = json.dumps(body)  # lone surrogates become \ud800 escapes, as a client sends them
    if depth:
        nested = '{"a": ' * depth + "1" + "}" * depth
        text = text.replace('"items": [{', '"items": [{"metadata": ' + nested + ", ", 1)
    return text.encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(body=BODIES, depth=DEPTHS, job_id=st.one_of(st.text(max_size=60), repeated(300)))
def test_hostile_requests_never_give_a_500(service_url: str, body: dict[str, Any], depth: int,
                                           job_id: str) -> None:
    content = encode(body, depth)
    response = httpx.post(service_url + API, content=content,
                          headers={"content-type": "application/json"}, timeout=30.0)
    assert response.status_code in CLIENT_ANSWERS, (response.status_code, response.text[:500])
    path = quote(job_id.encode("utf-8", "surrogatepass"), safe="") or "x"
    for method, suffix in (("GET", ""), ("GET", "/status"), ("DELETE", "")):
        response = httpx.request(method, f"{service_url}{API}/{path}{suffix}", timeout=30.0)
        assert response.status_code in {404, 422}, (method, path, response.text[:500])


@pytest.mark.parametrize("where", ["name", "metadata", "whitespace"])
def test_ten_megabyte_bodies_are_413(service_url: str, where: str) -> None:
    ten_mb = 10_000_000
    item: dict[str, Any] = {"product_name": "x", "category": "c", "price_exact": 1}
    if where == "name":
        item["product_name"] = "\ufdfa" * (ten_mb // 3)
    elif where == "metadata":
        item["metadata"] = {"deep": "y" * ten_mb}
    content = json.dumps({"items": [item]}, ensure_ascii=False).encode()
    if where == "whitespace":
        content = content[:1] + b" " * ten_mb + content[1:]
    response = httpx.post(service_url + API, content=content,
                          headers={"content-type": "application/json"}, timeout=30.0)
    assert response.status_code == 413, response.text[:500]
