"""`serve --ui`: the playground page in a real headless Chromium (Debian's chromium and
chromium-driver, through selenium) against the app on a loopback uvicorn: the page asks for the key,
streams a chat reply in pieces that add up to the API's greedy reply, and shows a classification."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from warmstart.config import ServeConfig
from warmstart.serving import ServedModel, create_app

selenium = pytest.importorskip("selenium", reason="needs selenium (pip install selenium)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs a browser: apt-get install -y chromium chromium-driver",
)
KEY = "playground-key"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Loopback:
    """The app under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def serve(folder: Path):
    served = ServedModel.load(str(folder), cpu=True, backend="torch")
    cfg = ServeConfig(model=served.name, ui=True, api_key=KEY, max_new_tokens=24)
    return Loopback(create_app(served, cfg)), served


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def use_key(driver, base: str) -> None:
    """Open the page: without the key it says so; typed in, the page loads the model's tabs."""
    driver.get(base + "/")
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: "API key" in d.find_element(By.ID, "status").text)
    driver.find_element(By.ID, "key").send_keys(KEY)
    driver.find_element(By.ID, "save-key").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tabs button"))


def test_chat_streams_a_reply_that_adds_up_to_the_apis(browser, tiny_gpt2, tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    tok.chat_template = CHATML
    tok.save_pretrained(tmp_path)
    GPT2LMHeadModel.from_pretrained(tiny_gpt2).save_pretrained(tmp_path)
    server, served = serve(tmp_path)
    try:
        use_key(browser, server.base)
        tabs = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#tabs button")]
        assert tabs[0] == "Chat" and "Classify" not in tabs
        temperature = browser.find_element(By.ID, "chat-temperature")
        temperature.send_keys("0")
        tokens = browser.find_element(By.ID, "chat-max-tokens")
        tokens.clear()
        tokens.send_keys("16")
        browser.find_element(By.ID, "chat-input").send_keys("Name a colour.", Keys.ENTER)
        reply = WebDriverWait(browser, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant[data-finish]")
        )
        assert reply.get_attribute("data-finish") in ("stop", "length")
        assert int(reply.get_attribute("data-chunks")) > 1  # it arrived in pieces
        shown = browser.execute_script("return arguments[0].firstChild.textContent", reply)
        body = {
            "model": served.name,
            "messages": [{"role": "user", "content": "Name a colour."}],
            "temperature": 0,
            "max_tokens": 16,
        }
        whole = httpx.post(
            f"{server.base}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        ).json()
        assert shown == whole["choices"][0]["message"]["content"]
    finally:
        server.stop()


def test_classify_form_shows_labels_with_scores(browser, tiny_models, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from warmstart.models import load_classifier

    torch.manual_seed(0)
    load_classifier(str(tiny_models["bert"]), ["negative", "positive"]).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_models["bert"]).save_pretrained(tmp_path)
    server, _ = serve(tmp_path)
    try:
        use_key(browser, server.base)
        tabs = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#tabs button")]
        assert tabs == ["Classify", "Embed"]  # the routes /info lists for a classifier
        browser.find_element(By.ID, "predict-send").click()
        results = WebDriverWait(browser, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#predict-output .result")
        )
        texts = browser.find_element(By.ID, "predict-input").get_attribute("value").splitlines()
        expected = httpx.post(
            f"{server.base}/predict",
            json={"texts": texts},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        ).json()["predictions"]
        assert len(results) == len(expected) == 2
        for result, prediction in zip(results, expected):
            assert result.find_element(By.CSS_SELECTOR, ".label").text == prediction["label"]
            assert f"{100 * prediction['score']:.1f}%" in result.text
            assert len(result.find_elements(By.CSS_SELECTOR, ".bar")) == 2  # one per class
    finally:
        server.stop()
