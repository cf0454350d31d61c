"""The web console in a real headless browser: Debian's chromium driven by Selenium through Debian's chromedriver
(tests/install-tools installs both; nothing downloads a browser at test time). A real `goex-proxy run` serves the
console; agents call the Slack fake through `goex-proxy exec`. The link signs in and leaves the address bar, a new
request appears in the log without a reload, its page shows an agent's `<script>` as text, its undo restores the
Slack fake, a held request approved from the approvals page completes, and a browser without the token is refused.
Screenshots of the main pages are saved to $GOEX_TEST_ARTIFACTS (else the test's tmp_path)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_approvals import Agent, posted
from tests.e2e.test_console import EVIL, HOLDING, SCRIPT, SLACK, with_console

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 30  # seconds: generous, the two shared cores also run a proxy, the agents and the Slack fake


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], WebDriver]]:
    """Start headless chromiums, each with a fresh profile (no cookies); all quit after the test."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: run tests/install-tools (Debian packages chromium, chromium-driver)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads anything (and is not needed here)
    started: list[WebDriver] = []

    def start() -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,900", "--no-proxy-server", "--no-first-run", "--disable-extensions"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(WAIT)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("GOEX_TEST_ARTIFACTS") or tmp_path) / "console-screenshots"
    where.mkdir(parents=True, exist_ok=True)
    return where


def shoot(driver: WebDriver, where: Path, name: str) -> None:
    path = where / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000, path
    print(f"screenshot: {path}")


def waiting(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT, poll_frequency=0.1)


def sign_in(driver: WebDriver, base: str, token: str) -> None:
    driver.get(f"{base}/?token={token}")
    waiting(driver).until(ec.url_to_be(f"{base}/"))
    assert "token" not in driver.current_url and token not in driver.current_url
    assert driver.title == "Requests · goex-proxy"


def no_alert(driver: WebDriver) -> bool:
    try:
        return not driver.switch_to.alert  # an Alert, or NoAlertPresentException
    except NoAlertPresentException:
        return True


class RefusedAsCrossSite(AssertionError):
    """The console answered a button of its own page with its cross-site refusal (403). It did, in Chromium, while
    the pages asked for no referrer: Chromium then sends `Origin: null` with a form, which the console refuses."""


REFUSAL = "refused: this request did not come from the console's own pages"


def answered(driver: WebDriver, done: Callable[[WebDriver], Any]) -> Any:
    """Wait until the page after a button is `done`; its cross-site refusal raises RefusedAsCrossSite."""
    def settled(d: WebDriver) -> Any:
        try:
            if REFUSAL in d.find_element(By.TAG_NAME, "body").text:
                raise RefusedAsCrossSite(f"{d.current_url}: {REFUSAL}")
        except StaleElementReferenceException:  # the page was replaced as it was read (the next one is loading)
            return False
        return done(d)

    return waiting(driver).until(settled)


def click(driver: WebDriver, selector: str) -> None:
    """Click the element, again if the page replaced it meanwhile (the approvals page reloads itself)."""
    def clicked(d: WebDriver) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, selector).click()
        except StaleElementReferenceException:
            return False
        return True

    waiting(driver).until(clicked)


def test_a_request_appears_live_its_page_shows_script_as_text_and_undo_restores_the_slack_fake(
        make_proxy: Any, upstream: Any, browser: Callable[[], WebDriver], artefacts: Path) -> None:
    proxy, base, token = with_console(make_proxy, SLACK)
    driver = browser()
    sign_in(driver, base, token)
    assert driver.find_elements(By.CSS_SELECTOR, "#log tbody tr") == []
    driver.execute_script("window.goexSamePage = 'not reloaded';")  # gone if anything reloads the page

    r = proxy.exec("mailbot", sys.executable, "-c", EVIL)
    assert r.returncode == 0 and '"ok": true' in r.stdout, r.stderr
    rid = str(proxy.rows()[-1]["id"])
    link: WebElement = waiting(driver).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f'#log tbody tr a[href="/request/{rid}"]')))
    assert driver.execute_script("return window.goexSamePage") == "not reloaded"
    row = driver.find_element(By.CSS_SELECTOR, "#log tbody tr")
    assert "new" in (row.get_attribute("class") or "") and "chat.postMessage" in row.text and "mailbot" in row.text
    assert no_alert(driver) and driver.title == "Requests · goex-proxy"
    shoot(driver, artefacts, "log")

    link.click()
    waiting(driver).until(ec.url_to_be(f"{base}/request/{rid}"))
    assert driver.title == f"Request {rid} · goex-proxy" and no_alert(driver)
    note = driver.find_element(By.XPATH, "//table[@class='headers']//th[normalize-space()='X-Note']/../td")
    assert note.text == SCRIPT  # shown as text, not run
    assert SCRIPT in driver.find_element(By.CSS_SELECTOR, "#req ~ pre.body").text
    scripts = driver.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("src") for s in scripts] == [f"{base}/static/console.js"]
    assert "intact" in driver.find_element(By.ID, "chain").text
    shoot(driver, artefacts, "request")

    undo = "form[action$='/undo'] button.danger"
    assert posted(upstream), "the agent's message is there before the undo"
    driver.find_element(By.CSS_SELECTOR, undo).click()
    waiting(driver).until(ec.alert_is_present()).dismiss()  # a second thought: nothing happens
    assert driver.current_url == f"{base}/request/{rid}" and posted(upstream)
    assert "chat.delete" not in upstream.state.slack_calls

    driver.find_element(By.CSS_SELECTOR, undo).click()
    waiting(driver).until(ec.alert_is_present()).accept()
    outcome = answered(driver, ec.visibility_of_element_located((By.ID, "outcome")))
    assert "done" in outcome.text and "ok" in (outcome.get_attribute("class") or ""), outcome.text
    assert posted(upstream) == {} and upstream.state.slack_calls.count("chat.delete") == 1
    shoot(driver, artefacts, "undone")
    driver.find_element(By.LINK_TEXT, "Back to the request").click()
    waiting(driver).until(ec.url_to_be(f"{base}/request/{rid}"))
    assert "already undone" in driver.find_element(By.TAG_NAME, "main").text
    assert driver.find_elements(By.CSS_SELECTOR, undo) == []


def test_a_held_request_approved_in_the_browser_lets_the_agents_call_complete(
        make_proxy: Any, upstream: Any, browser: Callable[[], WebDriver], artefacts: Path) -> None:
    proxy, base, token = with_console(make_proxy, HOLDING)
    ts = Agent(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": "to delete"}).outcome()["body"]["ts"]
    driver = browser()
    sign_in(driver, base, token)
    driver.find_element(By.LINK_TEXT, "Approvals").click()
    waiting(driver).until(ec.url_to_be(f"{base}/approvals"))
    assert "Nothing waits for you" in driver.find_element(By.ID, "waiting").find_element(By.XPATH, "..").text

    deleting = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": ts})
    card: WebElement = waiting(driver).until(  # the page reloads itself every few seconds
        ec.presence_of_element_located((By.CSS_SELECTOR, "article.card")))
    rid = (card.get_attribute("id") or "").removeprefix("w-")
    assert rid and "chat.delete" in card.text and "irreversible" in card.text
    waiting(driver).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"#w-{rid} .countdown"), " s"))
    shoot(driver, artefacts, "approvals")
    assert deleting.is_alive() and "chat.delete" not in upstream.state.slack_calls

    click(driver, f"#w-{rid} form[action='/approvals/{rid}/approve'] button")
    answered(driver, ec.url_to_be(f"{base}/approvals"))
    out = deleting.outcome()
    assert out["status"] == 200 and out["body"]["ok"] is True and ts not in posted(upstream), out
    assert upstream.state.slack_calls.count("chat.delete") == 1
    waiting(driver).until(ec.text_to_be_present_in_element((By.ID, "main"), "Nothing waits for you"))
    row = next(r for r in proxy.rows() if r["id"] == rid)
    assert row["status"] == 200 and '"decided_by": "console"' in str(row["approval"]).replace('":"', '": "')


def test_a_browser_without_the_token_is_refused(
        make_proxy: Any, upstream: Any, browser: Callable[[], WebDriver], artefacts: Path) -> None:
    proxy, base, token = with_console(make_proxy, SLACK)
    signed = browser()
    sign_in(signed, base, token)  # the console works, for the browser that opened the link
    assert signed.find_element(By.TAG_NAME, "h1").text == "Requests"

    stranger = browser()  # a fresh profile: no cookie
    for url in (f"{base}/", f"{base}/approvals", f"{base}/?token={'x' * 43}", f"{base}/request/x"):
        stranger.get(url)
        assert stranger.title == "Not signed in · goex-proxy", url
        assert stranger.find_element(By.TAG_NAME, "h1").text == "Not signed in"
        assert token not in stranger.page_source
    status = stranger.execute_async_script(
        "const done = arguments[arguments.length - 1]; fetch('/').then(r => done(r.status), e => done(String(e)));")
    assert status == 401
    shoot(stranger, artefacts, "refused")
