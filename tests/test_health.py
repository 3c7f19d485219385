from __future__ import annotations

import pytest

from saas import health


def test_healthz_answers_without_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_database_broker_and_storage(client, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "broker", "storage"}
    assert all(check["ok"] for check in body["checks"].values())


@pytest.mark.django_db
def test_readyz_reports_a_failing_dependency_with_503(client, monkeypatch, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)

    def broken() -> None:
        raise ConnectionRefusedError("broker down")

    monkeypatch.setitem(health.CHECKS, "broker", broken)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["broker"]["ok"] is False
    assert "broker down" in body["checks"]["broker"]["error"]
    assert body["checks"]["database"]["ok"] is True


@pytest.mark.django_db
def test_readyz_against_real_redis_broker(client, redis_url, settings, tmp_path, monkeypatch):
    from saas.celery import app

    settings.MEDIA_ROOT = str(tmp_path)
    saved = app.conf.broker_url
    app.conf.update(broker_url=redis_url)
    try:
        response = client.get("/readyz")
        assert response.json()["checks"]["broker"]["ok"] is True
    finally:
        app.conf.update(broker_url=saved)
