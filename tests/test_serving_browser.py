"""The web page in a real headless Chromium (Debian `chromium` + `chromium-driver`, driven by Selenium) against
a real server on loopback: upload an image, type a prompt, Generate, the video plays and the page names the
model version that made it; an API error is shown on the page.

With an API key, the page asks for it and sends it; a cross-site form aimed at the service is refused unrun.

Skips (with the reason) where chromium, chromedriver or selenium is missing; `.ci/run` installs them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")
pytest.importorskip("python_multipart", reason="pip install python-multipart (FastAPI form uploads)")
pytest.importorskip("selenium", reason="selenium not installed (pip install selenium; it is in the dev extra)")

from test_serving_app import build_tiny_export, png  # noqa: E402
from test_serving_auth import count_generations  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.server import running_server  # noqa: E402
from serving.settings import ServeSettings  # noqa: E402

CHROMIUM = os.environ.get("DVDM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("DVDM_CHROMEDRIVER") or shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium not found: apt-get install -y chromium chromium-driver (or set DVDM_CHROMIUM and "
           "DVDM_CHROMEDRIVER)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                "--no-first-run", "--disable-extensions", "--window-size=1000,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def versioned_export(tmp_path_factory) -> Path:
    """The tiny export as `download_version` leaves it: with model_version.json naming registry version 7."""
    folder = tmp_path_factory.mktemp("browser") / "export"
    shutil.copytree(build_tiny_export(tmp_path_factory), folder)
    (folder / "model_version.json").write_text(json.dumps({"name": "dvdm", "version": 7, "aliases": ["champion"],
                                                           "run_id": None, "source": "test"}))
    return folder


def test_page_generates_a_video_and_names_the_model(browser, versioned_export, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image = tmp_path / "first frame.png"
    image.write_bytes(png(40, 30, seed=4))
    settings = ServeSettings(provider="cpu", threads=1, max_steps=5)
    with running_server(create_app(versioned_export, settings=settings)) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-status"), "dvdm v7"))
        assert browser.find_element(By.ID, "steps").get_attribute("max") == "5"
        assert browser.find_element(By.ID, "steps").get_attribute("value") == "2"

        browser.find_element(By.ID, "image").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith("blob:"))
        browser.find_element(By.ID, "prompt").send_keys("a red circle moves up")
        steps = browser.find_element(By.ID, "steps")
        steps.clear()
        steps.send_keys("1")
        seed = browser.find_element(By.ID, "seed")
        seed.clear()
        seed.send_keys("3")
        browser.find_element(By.ID, "generate").click()

        wait.until(lambda d: (d.find_element(By.ID, "result-video").get_attribute("src") or "").startswith("blob:"))
        made_by = browser.find_element(By.ID, "made-by")
        wait.until(lambda d: "v7" in made_by.text)
        assert "Made by model dvdm v7" in made_by.text and "seed 3" in made_by.text and "1 steps" in made_by.text
        assert made_by.get_attribute("data-version") == "7"
        assert not browser.find_element(By.ID, "error").is_displayed()
        # the MP4 is really decoded by the browser: metadata loaded, the model's frame size
        wait.until(lambda d: d.execute_script("return document.getElementById('result-video').readyState") >= 1)
        size = browser.execute_script("const v = document.getElementById('result-video');"
                                      "return [v.videoWidth, v.videoHeight, v.duration];")
        assert size[:2] == [16, 16] and size[2] > 0

        # GIF output goes to an <img>
        Select(browser.find_element(By.ID, "format")).select_by_value("gif")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: (d.find_element(By.ID, "result-gif").get_attribute("src") or "").startswith("blob:"))
        wait.until(lambda d: d.execute_script("return document.getElementById('result-gif').naturalWidth") == 16)
        assert not browser.find_element(By.ID, "result-video").is_displayed()

        # an API error is shown on the page, and the page keeps working
        steps.clear()
        steps.send_keys("999")
        browser.find_element(By.ID, "generate").click()
        error = browser.find_element(By.ID, "error")
        wait.until(lambda d: error.is_displayed())
        assert "Error 422" in error.text and "steps must be in 1..5" in error.text
        steps.clear()
        steps.send_keys("1")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: not error.is_displayed())
        wait.until(lambda d: d.find_element(By.ID, "generate").is_enabled())
        console = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"
                   and "/v1/generate" not in e.get("message", "")]  # the deliberate 422 is logged by Chromium
        assert console == [], console


def test_api_docs_render_offline(browser, versioned_export):
    """Swagger UI at /docs renders the API from assets this server serves (no CDN: these machines are offline)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    settings = ServeSettings(provider="cpu", threads=1, max_steps=5)
    with running_server(create_app(versioned_export, settings=settings)) as url:
        browser.get(url + "/docs")
        wait = WebDriverWait(browser, 60)
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".swagger-ui .info .title"), "dvdm"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[id^='operations-'][id*='generate']"))
        resources = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);")
        assert resources and all(r.startswith(url) for r in resources), resources
        assert any(r.endswith("/docs-assets/swagger-ui-bundle.js") for r in resources)


def test_page_asks_for_the_access_token_and_sends_it(browser, versioned_export, tmp_path):
    """A server with an API key: the page says it needs a token, a wrong one is refused, the right one is kept
    for the tab (sessionStorage) and sent as the bearer token by /v1/model and /v1/generate."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    token = "browser-token-0123456789"
    image = tmp_path / "first.png"
    image.write_bytes(png(24, 24, seed=5))
    settings = ServeSettings(provider="cpu", threads=1, max_steps=5, api_key=token)
    with running_server(create_app(versioned_export, settings=settings)) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        status = browser.find_element(By.ID, "model-status")
        wait.until(lambda d: "Error 401" in status.text)
        assert "needs an access token" in status.text
        assert browser.find_element(By.ID, "token-form").is_displayed()

        browser.find_element(By.ID, "token").send_keys("not-the-token-0123456789")
        browser.find_element(By.ID, "use-token").click()
        wait.until(lambda d: "the access token is not valid" in status.text)
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "use-token").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-status"), "dvdm v7"))
        assert browser.find_element(By.ID, "token").get_attribute("value") == ""

        browser.refresh()  # kept for this tab: nothing to type again
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-status"), "dvdm v7"))
        assert not browser.find_element(By.ID, "token-form").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('dvdm-api-token')") == token

        browser.find_element(By.ID, "image").send_keys(str(image))
        steps = browser.find_element(By.ID, "steps")
        steps.clear()
        steps.send_keys("1")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: (d.find_element(By.ID, "result-video").get_attribute("src") or "").startswith("blob:"))
        assert "Made by model dvdm v7" in browser.find_element(By.ID, "made-by").text
        assert not browser.find_element(By.ID, "error").is_displayed()
        console = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"
                   and "/v1/model" not in e.get("message", "")]  # the deliberate 401s are logged by Chromium
        assert console == [], console


ATTACK_PAGE = """<!doctype html>
<form id="f" method="post" enctype="multipart/form-data" action="ACTION">
  <input type="file" name="image" id="image"><input name="prompt" value="x"><input name="steps" value="1">
</form>
<script>
const bytes = Uint8Array.from(atob("PNG"), (c) => c.charCodeAt(0));
const files = new DataTransfer();
files.items.add(new File([bytes], "a.png", { type: "image/png" }));
document.getElementById("image").files = files.files;
document.getElementById("f").submit();
</script>"""


def test_a_cross_site_form_cannot_spend_compute(browser, versioned_export):
    """A page on another site (http://localhost:<other port>) submits a multipart form with a real image to
    the loopback service, as any web page can (forms need no CORS): the service refuses it unrun."""
    import base64
    import http.server
    import threading

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(versioned_export, settings=ServeSettings(provider="cpu", threads=1, max_steps=5))
    with running_server(app) as url:
        calls = count_generations(app)
        page = ATTACK_PAGE.replace("ACTION", url + "/v1/generate").replace(
            "PNG", base64.b64encode(png(16, 16)).decode())

        class AttackPage(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AttackPage)
        threading.Thread(target=attacker.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://localhost:{attacker.server_address[1]}/")
            wait = WebDriverWait(browser, 30)
            wait.until(lambda d: d.current_url.startswith(url + "/v1/generate"))
            wait.until(lambda d: "refused" in d.find_element(By.TAG_NAME, "body").text)
            assert "cross-origin POST refused (Sec-Fetch-Site: cross-site)" in \
                browser.find_element(By.TAG_NAME, "body").text
            assert calls == []
        finally:
            attacker.shutdown()
            attacker.server_close()
