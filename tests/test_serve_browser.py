"""The page of ``flash-vstream serve`` in headless Chromium (selenium): load it, play the sample video, ask a
question and read the answer from the page. Skipped where Chromium, its driver or selenium is missing (CI
installs Debian's ``chromium`` and ``chromium-driver``)."""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from flash_vstream.cli import main as cli_main

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="needs Chromium and chromedriver (Debian: apt-get install chromium "
                                       "chromium-driver)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from flash_vstream import load_model
    from flash_vstream.serve.app import ServeConfig, create_app

    out = tmp_path_factory.mktemp("tiny") / "star"
    assert cli_main(["make-tiny", "--variant", "star-vicuna", "--out", str(out)]) == 0
    app = create_app(load_model(out), ServeConfig(model_name="tiny", fps=2.0, max_new_tokens=6))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # A fake camera (a moving test pattern) that the page may use without a permission prompt.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def test_page_plays_the_sample_and_answers_a_question(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, app = server
    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "choose a video" in d.find_element(By.ID, "status").text)
    assert "model tiny (star)" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "file").send_keys(str(SAMPLE))
    # The 7 s clip plays at real speed; at 2 frames per second of video time the page sends at most one frame per
    # half second of it (a slow tick may skip a slot), the last at its end.
    wait.until(lambda d: d.execute_script("return document.getElementById('video').ended"))
    # The last frame may still be on its way after "ended": wait until the page has none left to send (its next
    # slot lies past the clip's end, the rule its capture tick follows) and none in flight.
    wait.until(lambda d: d.execute_script(
        "return !tab.inFlight && tab.nextDue > document.getElementById('video').duration + 1e-6"))
    key = browser.execute_script("return tab.id")
    session = app.state.pool.get(key).session
    wait.until(lambda d: session.stats().frames_queued == 0 and session.stats().frames_seen >= 10)
    session.drain()
    seen = session.stats().frames_seen
    browser.find_element(By.ID, "question").send_keys("What moves?")
    browser.find_element(By.ID, "ask").click()
    item = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#answers li.answered"))
    text = browser.execute_script("return arguments[0].textContent", item.find_element(By.CLASS_NAME, "answer-text"))
    meta = item.find_element(By.CLASS_NAME, "meta").text
    assert browser.find_element(By.ID, "error").text == ""
    # The page shows exactly the server's answer from this session's memory (unchanged since: the clip ended).
    assert text == session.ask("What moves?", max_new_tokens=6).text and text  # exact (tiny models babble)
    assert meta.startswith(f"at {session.stats().stream_time:.1f} s of stream, {seen} frames | first token ")
    assert 10 <= seen <= 15 and session.stats().stream_time >= 6.0  # at most one per slot of 0, 0.5, ..., 7 s
    # The timeline shows the clusters, the retrieved frames' lines and their thumbnails.
    clusters = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.cluster")
    assert len(clusters) == len(session.timeline().clusters) > 0
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 4)  # 3 retrieved + newest
    assert all(browser.execute_script("return arguments[0].naturalWidth", img) == 64
               for img in browser.find_elements(By.CSS_SELECTOR, "#thumbs img"))


def test_page_streams_the_webcam(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, app = server
    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "choose a video" in d.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "camera").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text == "webcam")
    session = app.state.pool.get(browser.execute_script("return tab.id")).session
    wait.until(lambda d: session.stats().frames_seen >= 3)  # 2 frames a second of wall-clock time
    browser.find_element(By.ID, "question").send_keys("What is on the screen?")
    browser.find_element(By.ID, "ask").click()
    item = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#answers li.answered, #answers li.failed"))
    assert "answered" in item.get_attribute("class"), item.text
    assert browser.find_element(By.ID, "error").text == ""
    stats = session.stats()
    assert stats.frames_seen >= 3 and stats.frames_dropped == 0
    assert stats.stream_time >= (stats.frames_seen - 1) / 2 - 0.01  # one frame per half-second slot at most
