"""The web playground: its files and the key rule in-process, then the page in a real headless
browser (Debian's chromium, driven by Playwright, a fake microphone) against a running `higgs-tts serve`."""

import shutil
import tempfile

import pytest
from conftest import running_server
from fastapi.testclient import TestClient

from higgs_tts.delivery.app import create_app
from higgs_tts.delivery.playground import ASSETS, STATIC
from higgs_tts.settings import ServerSettings

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

KEY = "playground-key"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags for a closed network: nothing the browser does on its own reaches out.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required",
         # a fake microphone (a beeping tone), allowed without asking, for the record button
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@pytest.fixture
def client(service):
    return TestClient(create_app(service, ServerSettings(preload_model=False, api_key=KEY)), follow_redirects=False)


def test_page_and_assets_are_served_without_the_key_and_the_api_is_not(client):
    assert client.get("/").status_code == 307 and client.get("/").headers["location"] == "/playground"
    page = client.get("/playground")
    assert page.status_code == 200 and page.text == (STATIC / "playground.html").read_text()
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in ASSETS.items():
        asset = client.get(f"/playground/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert f"/playground/{name}" in page.text  # the page loads every asset, from this origin
    assert client.get("/v1/audio/voices").status_code == 401
    assert client.post("/playground", json={}).status_code == 401  # only GETs of the page are open


def test_only_the_listed_files_are_served(client):
    for path in ("/playground/../app.py", "/playground/%2e%2e%2fapp.py", "/playground/playground.html",
                 "/playground/missing.js"):
        reply = client.get(path, headers={"Authorization": f"Bearer {KEY}"})
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"


def test_the_page_references_nothing_outside_this_origin():
    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


@pytest.fixture(scope="module")
def server(tiny_checkpoint, voice_prompts, tmp_path_factory):
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, API_KEY=KEY) as url:
        yield url


@pytest.fixture
def browser_page(server, tmp_path):
    """A fresh chromium profile, every request the page makes recorded."""
    if not BROWSER:
        pytest.skip("no chromium installed (apt-get install -y chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path), executable_path=BROWSER, headless=True, args=FLAGS)
        page = context.new_page()
        page.set_viewport_size({"width": 1280, "height": 800})
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.console = []
        page.on("console", lambda message: page.console.append(message.text))
        try:
            yield page
        finally:
            context.close()


def test_speak_in_a_real_browser(server, browser_page, voice_prompts, tmp_path):
    page = browser_page
    page.goto(server + "/")  # redirected to /playground
    assert page.url == server + "/playground"
    # Without the key the voice list is refused, and the server's error body is shown.
    page.wait_for_selector("#error:not([hidden])")
    assert "invalid_api_key" in page.text_content("#error")

    page.fill("#key", KEY)
    page.dispatch_event("#key", "change")
    page.wait_for_selector("#speakers select option[value=belinda]", state="attached")
    page.select_option("#speakers select", "belinda")
    assert page.text_content(".speaker .desc")  # the voice's description is shown
    page.fill("#text", "Hello from the browser.")
    page.fill("#seed", "3")
    page.fill("#max_new_tokens", "40")
    page.select_option("#format", "wav")
    with page.expect_response("**/v1/audio/speech") as reply:
        page.click("#speak")
    assert reply.value.status == 200 and reply.value.headers["content-type"] == "audio/pcm"
    page.wait_for_selector("#history li")
    duration = page.evaluate("""() => new Promise((done) => {
        const audio = document.getElementById('player');
        if (audio.readyState >= 1) done(audio.duration);
        else audio.addEventListener('loadedmetadata', () => done(audio.duration));
    })""")
    assert duration > 0
    metrics = page.text_content("#metrics")
    assert "time to first audio" in metrics
    assert int(metrics.split(" pieces")[0].split()[-1]) > 1  # streamed: audio came (and played) in pieces
    assert page.get_attribute("#download", "download") == "take-1.wav"
    assert "belinda" in page.text_content("#history li") and "seed 3" in page.text_content("#history li")

    # mp3: played live through MediaSource, a second take in the history.
    page.select_option("#format", "mp3")
    page.click("#speak")
    page.wait_for_selector("#history li:nth-child(2)", state="attached")
    assert page.evaluate("document.getElementById('live').src").startswith("blob:")

    # A dialogue: one voice per [SPEAKERn] tag, sent as "a,b".
    page.click("#add-speaker")
    page.select_option("#speakers .speaker:nth-child(2) select", "chadwick")
    page.fill("#text", "[SPEAKER0] Hello there. [SPEAKER1] Hi!")
    with page.expect_request("**/v1/audio/speech") as sent:
        page.click("#speak")
    assert sent.value.post_data_json["voice"] == "belinda,chadwick"
    page.wait_for_selector("#history li:nth-child(3)", state="attached")

    # A bad request: the server's message, naming the field, is shown.
    page.fill("#temperature", "5")
    page.click("#speak")
    page.wait_for_selector("#error:not([hidden])")
    error = page.text_content("#error")
    assert "temperature" in error and "400" in error

    # Save the clip as a library voice; it appears in the picker.
    page.fill("#temperature", "0.8")
    page.click("#reference summary")
    page.set_input_files("#ref-file", str(voice_prompts / "en_man.wav"))
    page.fill("#ref-transcript", (voice_prompts / "en_man.txt").read_text())
    page.fill("#voice-name", "from_browser")
    page.click("#save-voice")
    page.wait_for_selector("#speakers select option[value=from_browser]", state="attached")
    assert page.input_value("#speakers select") == "from_browser"

    # Record a clip with the (fake) microphone, then clone once: the recording goes with the
    # request as a data URL, with its transcript.
    page.click("#record")
    page.wait_for_selector("#record:has-text('Stop recording')")
    page.wait_for_timeout(1500)
    page.click("#record")
    page.wait_for_selector("#record:has-text('Record'):not(:has-text('Stop'))")
    assert page.evaluate("document.getElementById('ref-preview').src").startswith("blob:")
    page.check("#use-ref")
    page.fill("#text", "Hello from the browser.")
    with page.expect_request("**/v1/audio/speech") as sent:
        page.click("#speak")
    body = sent.value.post_data_json
    assert body["ref_audio_base64"].startswith("data:audio/webm") and "voice" not in body
    assert body["ref_audio_transcript"] == (voice_prompts / "en_man.txt").read_text()
    page.wait_for_selector("#history li:nth-child(4)", state="attached")
    assert page.is_hidden("#error"), page.text_content("#error")
    assert "clone of recording.webm" in page.text_content("#history li")

    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    origin = server.rstrip("/")
    outside = [url for url in page.requests if not url.startswith((origin + "/", "blob:", "data:"))]
    assert not outside, f"requests to other origins: {outside}"
    assert any(url.endswith("/v1/voices") for url in page.requests)
