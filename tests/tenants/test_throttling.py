"""Where the API throttle counts: the ``throttle`` cache, shared by every process through Redis
when REDIS_URL is set; counting is atomic, so concurrent workers never let a token past its rate;
a cache outage lets requests through instead of failing them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache, caches
from rest_framework.test import APIClient

from tenants.models import ApiToken, Organization
from tenants.throttling import THROTTLE_CACHE_ALIAS, TokenRateThrottle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def low_throttle(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Per day: a test never straddles two counting windows (they turn at midnight UTC).
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "3/day"})
    caches[THROTTLE_CACHE_ALIAS].clear()
    yield
    caches[THROTTLE_CACHE_ALIAS].clear()


def _request(token_pk: int) -> Any:
    """What the throttle reads of a DRF request authenticated with a token."""

    class Request:
        auth = ApiToken(pk=token_pk)
        user = None

    return Request()


def test_throttle_uses_its_own_cache_alias() -> None:
    assert isinstance(TokenRateThrottle().cache, type(caches[THROTTLE_CACHE_ALIAS]))
    assert TokenRateThrottle().cache is caches[THROTTLE_CACHE_ALIAS]


@pytest.mark.django_db
def test_throttle_counts_in_the_throttle_cache_not_the_default_one(
    org: Organization, make_token: Callable[..., tuple[ApiToken, str]], low_throttle: None
) -> None:
    token, secret = make_token(org)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    statuses = [client.get("/api/v1/organization/").status_code for _ in range(4)]
    window = int(TokenRateThrottle().timer() // 86400)
    key = f"throttle_token_t{token.pk}:{window}"

    assert statuses == [200, 200, 200, 429]
    assert caches[THROTTLE_CACHE_ALIAS].get(key) == 3
    assert cache.get(key) is None


def test_throttle_with_redis_settings_points_at_redis() -> None:
    # What saas/settings/base.py builds when REDIS_URL is set.
    from django.core.cache.backends.redis import RedisCache

    code = textwrap.dedent(
        """
        from django.conf import settings
        print(settings.CACHES["throttle"]["BACKEND"], settings.CACHES["throttle"]["LOCATION"])
        """
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "saas.settings.test",
        "REDIS_URL": "redis://127.0.0.1:6399/3",
    }
    out = _run_django(code, env)

    assert out.split() == [f"{RedisCache.__module__}.RedisCache", "redis://127.0.0.1:6399/3"]


def test_refused_requests_are_not_counted_and_the_wait_is_given(low_throttle: None) -> None:
    request = _request(token_pk=10**9 + 1)
    results = [TokenRateThrottle().allow_request(request, None) for _ in range(3)]
    refused = TokenRateThrottle()

    assert results == [True, True, True]
    assert refused.allow_request(request, None) is False
    wait = refused.wait()
    assert wait is not None and 0 < wait <= 86400
    counts = caches[THROTTLE_CACHE_ALIAS]
    window_keys = [f"throttle_token_t{10**9 + 1}:{int(refused.timer() // 86400)}"]
    assert counts.get_many(window_keys) == {window_keys[0]: 3}


def test_unreachable_cache_lets_requests_through(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def add(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")

    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "1/min"})
    throttle = TokenRateThrottle()
    throttle.cache = Broken()  # type: ignore[assignment]

    assert throttle.allow_request(_request(token_pk=7), None) is True


def _run_django(code: str, env: dict[str, str]) -> str:
    script = "import django\ndjango.setup()\n" + code
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.redis
def test_two_processes_share_one_count_with_redis(redis_url: str) -> None:
    """Two web processes (two Python processes, two Redis connection pools) hammering with one
    token at the same time are let through exactly the rate, not twice it."""
    token_pk = 2_000_000_000 + uuid.uuid4().int % 1_000_000
    code = textwrap.dedent(
        f"""
        import time
        from tenants.models import ApiToken
        from tenants.throttling import TokenRateThrottle
        TokenRateThrottle.THROTTLE_RATES = {{"token": "20/day"}}

        class Request:
            auth = ApiToken(pk={token_pk})
            user = None

        start = float(__import__("sys").argv[1])
        time.sleep(max(0.0, start - time.time()))  # both processes start counting together
        print(sum(TokenRateThrottle().allow_request(Request(), None) for _ in range(20)))
        """
    )
    script = "import django\ndjango.setup()\n" + code
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "saas.settings.test", "REDIS_URL": redis_url}
    start = str(time.time() + 4)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, start],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    allowed = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]
        allowed.append(int(out.strip().splitlines()[-1]))

    assert sum(allowed) == 20, allowed
