"""Signing in to the console: an API key for a session cookie, roles, CSRF, signing out."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from .pages import KEYS, console_settings, hidden, sign_in


def test_a_page_without_a_session_sends_to_the_sign_in_form(console: TestClient) -> None:
    answer = console.get("/console", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/sign-in"


@pytest.mark.parametrize("role", ["marketing", "admin"])
def test_a_key_becomes_an_http_only_strict_session_cookie(console: TestClient, role: str) -> None:
    form = console.get("/console/sign-in")
    answer = console.post(
        "/console/sign-in",
        data={"key": KEYS[role], "csrf": hidden(form.text, "csrf"), "next": "/console"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith("recoffer_console=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert KEYS[role] not in cookie  # the key itself never reaches the browser
    page = console.get("/console")
    assert page.status_code == 200
    assert f'title="Signed in as">{role}<' in page.text


def test_the_menu_follows_the_role(console: TestClient) -> None:
    sign_in(console, "marketing")
    page = console.get("/console").text
    assert 'href="/console/campaigns"' in page
    assert 'href="/console/models"' not in page
    console.cookies.clear()
    sign_in(console, "admin")
    assert 'href="/console/models"' in console.get("/console").text


@pytest.mark.parametrize(
    ("key", "status", "says"),
    [
        ("", 422, "key: enter an API key"),
        ("wrong-key-0123456789", 401, "key: not a valid API key"),
        (KEYS["frontend"], 403, "a frontend key cannot sign in"),
    ],
)
def test_a_refused_key_gets_the_form_back_with_the_reason(
    console: TestClient, key: str, status: int, says: str
) -> None:
    form = console.get("/console/sign-in")
    answer = console.post("/console/sign-in", data={"key": key, "csrf": hidden(form.text, "csrf")})
    assert answer.status_code == status
    assert says in answer.text
    assert "recoffer_console=" not in answer.headers.get("set-cookie", "")


def test_a_sign_in_without_the_forms_token_is_refused(console: TestClient) -> None:
    answer = console.post("/console/sign-in", data={"key": KEYS["admin"], "csrf": "forged"})
    assert answer.status_code == 403
    assert "expired" in answer.text


def test_after_sign_in_only_console_paths_are_followed(console: TestClient) -> None:
    form = console.get("/console/sign-in")
    answer = console.post(
        "/console/sign-in",
        data={"key": KEYS["admin"], "csrf": hidden(form.text, "csrf"), "next": "//evil.example"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/console"


def test_a_form_without_the_sessions_csrf_token_is_refused(console: TestClient) -> None:
    csrf = sign_in(console, "admin")
    refused = console.post("/console/sign-out", data={"csrf": "not-it"})
    assert refused.status_code == 403
    assert console.get("/console").status_code == 200  # still signed in
    out = console.post("/console/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303


def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(console: TestClient) -> None:
    csrf = sign_in(console, "marketing")
    stolen = dict(console.cookies)
    console.post("/console/sign-out", data={"csrf": csrf})
    console.cookies.clear()
    console.cookies.update(stolen)
    assert console.get("/console", follow_redirects=False).status_code == 303


def test_a_key_taken_out_of_the_settings_ends_its_sessions(tmp_path: Path) -> None:
    settings = console_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        sign_in(client, "marketing")
        cookies = dict(client.cookies)
    rotated = console_settings(tmp_path, marketing_keys=["another-marketing-key-0123"])
    with TestClient(create_app(rotated)) as client:
        client.cookies.update(cookies)
        assert client.get("/console", follow_redirects=False).status_code == 303


def test_pages_load_nothing_from_another_host(console: TestClient) -> None:
    sign_in(console, "admin")
    page = console.get("/console")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "style-src 'self'" in policy
    assert page.headers["cache-control"] == "no-store"
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert console.get("/console/static/console.css").status_code == 200
    assert console.get("/console/charts.css").headers["content-type"].startswith("text/css")


def test_development_mode_enters_as_admin_from_this_machine_only(tmp_path: Path) -> None:
    settings = console_settings(tmp_path, auth_disabled=True)
    with TestClient(create_app(settings), client=("127.0.0.1", 5000)) as client:
        form = client.get("/console/sign-in")
        assert "you enter as admin" in form.text
        client.post("/console/sign-in", data={"csrf": hidden(form.text, "csrf")})
        assert 'href="/console/models"' in client.get("/console").text
    with TestClient(create_app(settings), client=("203.0.113.9", 5000)) as client:
        form = client.get("/console/sign-in")
        answer = client.post("/console/sign-in", data={"csrf": hidden(form.text, "csrf")})
        assert answer.status_code == 403


def test_after_signing_in_again_the_page_comes_back_with_its_query(console: TestClient) -> None:
    answer = console.get("/console/loyalty?period=week", follow_redirects=False)
    assert answer.headers["location"] == "/console/sign-in?next=/console/loyalty%3Fperiod%3Dweek"
    form = console.get(answer.headers["location"])
    assert hidden(form.text, "next") == "/console/loyalty?period=week"


def test_a_button_pressed_after_the_session_ended_comes_back_to_its_page(
    console: TestClient,
) -> None:
    page = "http://testserver/console/campaigns/new_user_high_intent"
    answer = console.post(
        "/console/campaigns/new_user_high_intent/pause",
        data={"csrf": "old"},
        headers={"referer": page},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == (
        "/console/sign-in?next=/console/campaigns/new_user_high_intent"
    )
    elsewhere = console.post(
        "/console/campaigns/new_user_high_intent/pause",
        headers={"referer": "https://evil.example/console/x"},
        follow_redirects=False,
    )
    assert elsewhere.headers["location"] == "/console/sign-in"
