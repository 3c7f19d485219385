from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from saas import env


@pytest.mark.parametrize(
    ("func", "name", "value", "args"),
    [
        (env.boolean, "DEBUG", "maybe", (False,)),
        (env.integer, "WEBHOOK_MAX_ATTEMPTS", "many", (3,)),
        (env.integer, "WEBHOOK_MAX_ATTEMPTS", "0", (3,)),
        (env.database, "DATABASE_URL", "nonsense", ("sqlite:///x",)),
        (env.redis_url, "REDIS_URL", "http://127.0.0.1:6379", ()),
        (env.throttle_rate, "API_THROTTLE_RATE", "fast", ("10/min",)),
        (env.choice, "LOG_LEVEL", "LOUD", ("INFO", ["INFO", "DEBUG"])),
        (env.nameservers, "SSO_DNS_NAMESERVERS", "dns.hospital.example", ()),
        (env.nameservers, "SSO_DNS_NAMESERVERS", "10.0.0.53:99999", ()),
    ],
)
def test_bad_values_raise_improperly_configured_naming_the_variable(
    monkeypatch, func, name, value, args
):
    monkeypatch.setenv(name, value)
    kwargs = {"minimum": 1} if func is env.integer else {}
    with pytest.raises(ImproperlyConfigured) as err:
        func(name, *args, **kwargs)
    assert name in str(err.value)


def test_good_values_are_parsed(monkeypatch):
    monkeypatch.setenv("DEBUG", "yes")
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db.example:5432/strata")
    monkeypatch.setenv("ALLOWED_HOSTS", "a.example, b.example")
    assert env.boolean("DEBUG", False) is True
    assert env.database("DATABASE_URL", "sqlite:///x")["ENGINE"] == "django.db.backends.postgresql"
    assert env.csv_list("ALLOWED_HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.setenv("SSO_DNS_NAMESERVERS", "10.0.0.53, 10.0.0.54:5353, [fd00::53]:53, fd00::54")
    assert env.nameservers("SSO_DNS_NAMESERVERS") == [
        ("10.0.0.53", 53),
        ("10.0.0.54", 5353),
        ("fd00::53", 53),
        ("fd00::54", 53),
    ]


def test_secret_key_required_without_debug(monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        env.secret_key(debug=False)
    assert env.secret_key(debug=True)
    monkeypatch.setenv("SECRET_KEY", "short")
    with pytest.raises(ImproperlyConfigured, match="32"):
        env.secret_key(debug=False)
