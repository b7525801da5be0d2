"""Signing in to the console in a real browser, with each role."""

from __future__ import annotations

import pytest

from benchmarks.demo_console import KEYS

from .console import PHONE, Console


@pytest.mark.parametrize("role", ["marketing", "admin"])
def test_each_role_signs_in_and_sees_its_menu(console: Console, role: str) -> None:
    console.sign_in(role)
    ms = console.open("/console", name=f"overview ({role})")
    assert ms < 5_000  # a sanity bound; the figure itself is reported, not asserted
    menu = console.tab.locator("header nav").inner_text()
    assert "Campaigns" in menu
    assert ("Models" in menu) is (role == "admin")
    cookies = {c["name"]: c for c in console.tab.context.cookies()}
    session = cookies["recoffer_console"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert KEYS[role] not in session["value"]
    console.screenshot(f"overview-{role}")


def test_a_frontend_key_is_refused_with_the_reason(console: Console) -> None:
    console.tab.goto(f"{console.url}/console/sign-in")
    console.tab.fill("#key", KEYS["frontend"])
    console.tab.click("button[type=submit]")
    assert "cannot sign in to the console" in console.tab.locator(".problem").inner_text()
    console.screenshot("sign-in-refused")


def test_signing_out_ends_the_session(console: Console) -> None:
    console.sign_in("marketing")
    console.tab.click("form.sign-out button")
    console.tab.wait_for_url(f"{console.url}/console/sign-in")
    console.tab.goto(f"{console.url}/console")
    assert console.tab.url == f"{console.url}/console/sign-in"


def test_the_sign_in_page_fits_a_phone(console: Console) -> None:
    console.open("/console/sign-in", name="sign-in")
    console.tab.set_viewport_size(PHONE)
    width = console.tab.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # nothing wider than the screen: no sideways scrolling
    console.screenshot("sign-in", phone=True)
