"""The SMART client library people use in browsers (fhirclient.js, vendored in tests/auth/static
with its licence) completes real launches against the live server in headless Chromium.

The app is served from its own origin (another port on 127.0.0.1), so everything after the
redirect is cross-origin as in production: fhirclient.js reads the SMART configuration (open
CORS), exchanges the code with its PKCE verifier at the token endpoint and reads the patient
with the access token (CORS only for the registered app's origin). The test drives the login and
consent pages like a user and asserts on what the app page shows.

Skips (with the reason) where Chromium, its driver or selenium are not installed; on Debian:
``apt-get install chromium chromium-driver`` and the ``test`` extra.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from smarthelp import assertion, backend_form, ec_key, engine_of, jwks_of, token_url

from app.auth.clients import add_client
from app.auth.users import add_user

STATIC = Path(__file__).parent / "static"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)

if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

APP = "browser-app"
PATIENT_ID = "browser-pat"
OTHER_ID = "browser-other"
PASSWORD = "correct horse battery"
WAIT_S = 30


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture(scope="module")
def app_origin() -> Iterator[str]:
    """The SMART app's own web server: the launch page, the redirect page and fhirclient.js."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(STATIC)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    t.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(autouse=True)
def fresh_session(browser) -> None:
    """Every launch starts logged out (cookies are per host, not per port: the servers of both
    database runs share 127.0.0.1)."""
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})


@pytest.fixture(scope="module")
def registered(auth_server, auth_app, issue_token, app_origin) -> None:
    admin = issue_token("system/*.cruds")
    for pid, family in ((PATIENT_ID, "Browser"), (OTHER_ID, "Elsewhere")):
        r = requests.put(f"{auth_server.base}/Patient/{pid}",
                         headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {admin}"},
                         json={"resourceType": "Patient", "id": pid, "name": [{"family": family}]})
        assert r.status_code in (200, 201), r.text
    e = engine_of(auth_app)
    add_client(e, client_id=APP, kind="app", redirect_uris=[f"{app_origin}/index.html"],
               scope="launch launch/patient patient/*.rs user/*.rs openid fhirUser offline_access")
    add_user(e, "browser-patient", f"Patient/{PATIENT_ID}", PASSWORD)
    add_user(e, "browser-doc", "Practitioner/browser-doc", PASSWORD)


def _text(driver, element_id: str) -> str:  # noqa: ANN001
    return driver.find_element(By.ID, element_id).text


def _login_and_consent(driver, username: str) -> None:  # noqa: ANN001
    wait = WebDriverWait(driver, WAIT_S)
    wait.until(lambda d: d.find_elements(By.ID, "username"))
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form[method=post] button[type=submit]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[value=allow]"))
    driver.find_element(By.CSS_SELECTOR, "button[value=allow]").click()


def _run_app(driver, app_origin: str) -> str:  # noqa: ANN001
    """Wait until the app page has finished (or failed); returns its status text."""
    try:
        WebDriverWait(driver, WAIT_S).until(
            lambda d: d.current_url.startswith(app_origin + "/index.html")
            and d.find_elements(By.ID, "status")
            and d.find_element(By.ID, "status").text != "waiting"
        )
    except TimeoutException:
        pytest.fail(f"the app page did not finish: at {driver.current_url}; console: {driver.get_log('browser')}")
    return _text(driver, "status")


def test_fhirclient_js_standalone_launch(browser, auth_server, app_origin, registered):
    scope = "launch/patient patient/*.rs openid fhirUser offline_access"
    browser.get(f"{app_origin}/launch.html?" + urlencode({"iss": auth_server.base, "client_id": APP, "scope": scope}))
    WebDriverWait(browser, WAIT_S).until(lambda d: d.current_url.startswith(auth_server.url + "/auth/authorize"))
    assert "code_challenge_method=S256" in browser.current_url
    _login_and_consent(browser, "browser-patient")
    status = _run_app(browser, app_origin)
    assert status == "done", (status, browser.page_source[:2000])
    assert _text(browser, "patient-id") == PATIENT_ID
    assert _text(browser, "patient-family") == "Browser"
    assert set(_text(browser, "scope").split()) == set(scope.split())
    assert _text(browser, "fhir-user") == f"{auth_server.base}/Patient/{PATIENT_ID}"
    # the same token asking for another patient's record is turned away (policy: 404)
    assert _text(browser, "other") == "refused 404"


def test_fhirclient_js_ehr_launch(browser, auth_server, auth_app, app_origin, registered):
    key = ec_key("browser-epr-1")
    add_client(engine_of(auth_app), client_id="browser-epr", kind="backend", scope="system/*.rs",
               jwks=jwks_of(key))
    tok = requests.post(token_url(auth_server),
                        data=backend_form(assertion(key, "ES384", "browser-epr", token_url(auth_server))))
    assert tok.status_code == 200, tok.text
    r = requests.post(auth_server.url + "/auth/launch", json={"patient": PATIENT_ID},
                      headers={"Authorization": f"Bearer {tok.json()['access_token']}"})
    assert r.status_code == 201, r.text
    scope = "launch openid fhirUser user/*.rs"
    browser.get(f"{app_origin}/launch.html?" + urlencode(
        {"iss": auth_server.base, "launch": r.json()["launch"], "client_id": APP, "scope": scope}))
    WebDriverWait(browser, WAIT_S).until(lambda d: d.current_url.startswith(auth_server.url + "/auth/authorize"))
    _login_and_consent(browser, "browser-doc")
    status = _run_app(browser, app_origin)
    assert status == "done", (status, browser.page_source[:2000])
    # the EPR's launch context came back in the token response and the app read that patient
    assert _text(browser, "patient-id") == PATIENT_ID
    assert _text(browser, "patient-family") == "Browser"
    assert _text(browser, "fhir-user") == f"{auth_server.base}/Practitioner/browser-doc"
    # a practitioner's user/*.rs reaches other patients too
    assert _text(browser, "other") == "readable"


def test_unregistered_origin_gets_no_cors(auth_server, app_origin, registered, issue_token):
    """What the browser relies on above: the token endpoint and the FHIR API answer CORS only
    for the registered app's origin."""
    tok = issue_token("patient/*.rs", patient=PATIENT_ID, client_id=APP)
    for origin, allowed in ((app_origin, True), ("http://evil.example", False)):
        pre = requests.options(f"{auth_server.base}/Patient/{PATIENT_ID}", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        got = requests.get(f"{auth_server.base}/Patient/{PATIENT_ID}",
                           headers={"Origin": origin, "Authorization": f"Bearer {tok}"})
        tpre = requests.options(token_url(auth_server), headers={"Origin": origin,
                                                                 "Access-Control-Request-Method": "POST"})
        for resp in (pre, got, tpre):
            assert resp.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None), resp.url
        assert got.status_code == 200
