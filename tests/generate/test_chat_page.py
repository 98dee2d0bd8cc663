"""The chat page at `/` (generate/web_chat.py, generate/chat_page/).

First without a browser: the files are served with a strict Content-Security-Policy, load nothing from
elsewhere, and need no API key while the API behind them does. Then in a real browser (Debian's
Chromium driven by Playwright): an answer streams in token by token, Stop ends it and the server stops
generating, the server's refusals are shown in its own words, the conversation survives a reload, and
text is shown as text, never run as HTML.
"""

import os
import re
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from lmforge.generate.chat import CHATML
from lmforge.generate.engine import Engine
from lmforge.generate.limits import ServerLimits
from lmforge.generate.server import create_app, running_in_background
from lmforge.generate.web_chat import PAGE_FILES, page_file
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer

MODEL = "tiny"
KEY = "s3cret"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; .ci/run installs it
STEP_S = 0.02  # each decode step of the test model waits this long
LIMITS = ServerLimits(max_tokens=1000, max_model_len=1300, max_body_bytes=4000)
ANSWER_TEXT = "document.querySelector('.msg.assistant:last-child .text')"
MODEL_SHOWN = "document.getElementById('model-info').textContent.includes('tiny')"


class StepCounter:
    """Counts the model's decode steps and slows each down by STEP_S, so that an answer's text visibly
    grows in the page and a long one lasts long enough to be stopped. It hooks the model's output layer,
    which every step calls once, whichever scheduler runs the model."""

    def __init__(self, model: GPT):
        self.steps = 0
        model.lm_head.register_forward_pre_hook(self.step)

    def step(self, module, args) -> None:
        self.steps += 1
        time.sleep(STEP_S)

    def settled(self, timeout: float = 10) -> int:
        """The number of steps once the model has stopped running (no step for 10 steps' time)."""
        deadline = time.monotonic() + timeout
        while True:
            steps = self.steps
            time.sleep(10 * STEP_S)
            if self.steps == steps:
                return steps
            assert time.monotonic() < deadline, "the model is still running"


def slow_engine() -> tuple[Engine, StepCounter]:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["<|im_start|>system user assistant\n<|im_end|> Hello, world! abcdefxyz?"])
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=256))
    return Engine(model, tokenizer), StepCounter(model)


def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---- served as it should be (no browser) ----

@pytest.fixture(scope="module")
def engine():
    return slow_engine()[0]


def test_the_page_and_its_files_are_served_with_a_strict_policy(engine):
    with TestClient(create_app(engine, MODEL, CHATML)) as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="chat.js"' in page.text
        for path, media_type in [("/chat.js", "text/javascript"), ("/chat.css", "text/css"),
                                 ("/favicon.svg", "image/svg+xml")]:
            response = http.get(path)
            assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
            assert response.content == page_file(PAGE_FILES[path][0])


def test_the_page_loads_nothing_from_elsewhere():
    urls = {url for name, _ in PAGE_FILES.values() for url in re.findall(r"\w+://[^\s\"'<>)]*",
                                                                         page_file(name).decode())}
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG icon's XML namespace, a name that is never fetched
    script = re.sub(r"//.*", "", page_file("chat.js").decode())  # the code, without its comments
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)


def test_the_page_needs_no_api_key_but_the_api_does(engine):
    with TestClient(create_app(engine, MODEL, CHATML, LIMITS, api_key=KEY)) as http:
        assert all(http.get(path).status_code == 200 for path in PAGE_FILES)
        assert http.get("/v1/models").status_code == 401
        assert http.post("/v1/chat/completions", json={"model": MODEL, "messages": []}).status_code == 401
        models = http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert models.status_code == 200
    assert models.json()["data"][0]["max_model_len"] == LIMITS.max_model_len  # what the page shows


def test_the_page_is_refused_to_a_wrong_host_like_the_api(engine):
    with TestClient(create_app(engine, MODEL, CHATML, allowed_hosts=["localhost"])) as http:
        assert http.get("/", headers={"host": "localhost:8000"}).status_code == 200
        assert http.get("/", headers={"host": "evil.example"}).status_code == 421  # DNS rebinding


# ---- in a browser ----

@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright (never `playwright install`: no download)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the chat page's browser tests need playwright "
                                                                 "(pip install -e '.[dev]')")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"the chat page's browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start; --disable-dev-shm-usage: a
        # container's /dev/shm is often 64 MB, too small for Chromium's shared memory.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served():
    """The slowed test model behind a real server: (its URL, its step counter)."""
    engine, counter = slow_engine()
    with running_in_background(create_app(engine, MODEL, CHATML, LIMITS)) as url:
        yield url, counter


@pytest.fixture(scope="module")
def served_with_key():
    engine, _ = slow_engine()
    with running_in_background(create_app(engine, MODEL, CHATML, LIMITS, api_key=KEY)) as url:
        yield url


@pytest.fixture
def page(browser):
    """A fresh browser profile (empty localStorage) per test; a script error fails the test."""
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    context.close()
    assert not errors, f"the page's script failed: {errors}"


def chat_requests(page) -> list[dict]:
    """The bodies the page will POST to /v1/chat/completions, as they are sent."""
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    return bodies


def wait_for(page, condition: str, timeout: float = 20) -> None:
    """Wait until a JavaScript expression is true in the page. (Playwright's wait_for_function evaluates
    its condition with eval, which the page's Content-Security-Policy forbids; page.evaluate is allowed.)"""
    wait_until(lambda: page.evaluate(condition), timeout)


def open_page(page, url: str, model_loads: bool = True) -> None:
    page.goto(f"{url}/")
    if model_loads:
        wait_for(page, MODEL_SHOWN)
    else:
        wait_for(page, "document.getElementById('status').textContent !== ''")


def settings(page, **values: str) -> None:
    """Open the settings (if closed) and fill in these fields."""
    if page.locator("#settings").get_attribute("open") is None:
        page.click("#settings summary")
    for field, value in values.items():
        page.fill(f"#{field}", value)


def start(page, text: str) -> None:
    """Type a message and send it with Enter; returns once the server has answered (or begun to)."""
    page.fill("#input", text)
    with page.expect_response(lambda response: response.url.endswith("/v1/chat/completions")):
        page.press("#input", "Enter")


def wait_ready(page) -> None:
    page.wait_for_selector("#send:enabled")  # the answer is over: the page takes a new message


def send(page, text: str) -> None:
    start(page, text)
    wait_ready(page)


def conversation(page) -> list[tuple[str, str]]:
    """(role, text) of every message shown."""
    return [(m.get_attribute("class").split()[1], m.locator(".text").text_content())
            for m in page.locator("#log .msg").all()]


def test_an_answer_streams_in_token_by_token(page, served):
    url, _ = served
    sent = chat_requests(page)
    open_page(page, url)
    assert page.text_content("#model-info") == f"{MODEL} · context {LIMITS.max_model_len} tokens"
    settings(page, system="Be brief.", temperature="0", top_p="0.9", max_tokens="60")
    # Watch the answer from inside the page: every change to its text is noted, with when it happened.
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            const text = %s;
            if (text) window.seen.push([performance.now(), text.textContent.length]);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    }""" % ANSWER_TEXT)
    send(page, "Hello?")

    expected = {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hello?"}],
                "stream": True, "temperature": 0, "top_p": 0.9, "max_tokens": 60}
    assert sent == [expected]
    whole = httpx.post(f"{url}/v1/chat/completions", json={**expected, "stream": False}, timeout=60).json()
    assert conversation(page) == [("user", "Hello?"), ("assistant", whole["choices"][0]["message"]["content"])]
    assert page.text_content(".msg.assistant .note") == "cut at max tokens"  # finish_reason "length"
    seen = page.evaluate("window.seen")
    lengths = [length for _, length in seen if length]
    assert lengths == sorted(lengths) and len(set(lengths)) >= 5, seen  # it grew, piece after piece ...
    growing_s = (seen[-1][0] - next(t for t, length in seen if length)) / 1000
    assert growing_s > 10 * STEP_S, seen  # ... over time, not filled in at once


def test_stop_keeps_the_partial_answer_and_the_server_stops_generating(page, served):
    url, counter = served
    sent = chat_requests(page)
    open_page(page, url)
    settings(page, temperature="0", max_tokens="1000")  # 1000 steps: 20 s unless stopped
    steps_before = counter.steps
    start(page, "Tell me a long story")
    wait_for(page, f"{ANSWER_TEXT}?.textContent.length >= 10")
    page.click("#stop")
    wait_ready(page)

    partial = page.locator(".msg.assistant .text").last.text_content()
    assert 10 <= len(partial) < 1000
    assert page.text_content(".msg.assistant .note") == "stopped"
    assert page.text_content("#status") == "Stopped."
    # The server let the request go at once: nothing in flight, and the model stopped a few steps later.
    wait_until(lambda: httpx.get(f"{url}/health").json()["requests"] == 0, timeout=5)
    assert counter.settled() - steps_before < 200

    # Ready for the next message, which carries the partial answer as history.
    settings(page, max_tokens="5")
    send(page, "And then?")
    assert sent[-1]["messages"] == [{"role": "user", "content": "Tell me a long story"},
                                    {"role": "assistant", "content": partial},
                                    {"role": "user", "content": "And then?"}]
    assert [role for role, _ in conversation(page)] == ["user", "assistant", "user", "assistant"]


def test_a_refused_request_shows_the_servers_message_and_gives_the_text_back(page, served):
    url, _ = served
    open_page(page, url)
    settings(page, max_tokens="5000")
    send(page, "Hello?")
    assert page.text_content("#status") == ("The server refused the request (400): max_tokens must be between "
                                            "1 and 1000, got 5000")
    assert conversation(page) == []  # nothing was answered: the message waits in the box to be sent again
    assert page.input_value("#input") == "Hello?"

    settings(page, max_tokens="5")
    send(page, "x" * 5000)  # a body over --max-body-bytes (4000 here)
    assert page.text_content("#status") == "The server refused the request (413): the request body is larger " \
                                           "than 4000 bytes (lmforge serve --max-body-bytes)"


def test_a_failure_midway_keeps_the_text_so_far_and_says_why(page, served):
    url, _ = served
    open_page(page, url)
    chunk = '{"choices": [{"index": 0, "delta": {"content": "Once upon"}, "finish_reason": null}]}'
    error = '{"error": {"message": "internal error: RuntimeError", "type": "server_error"}}'
    # The server's answer to a model that breaks midway (test_generate_server_hostile.py), replayed.
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body=f"data: {chunk}\n\ndata: {error}\n\ndata: [DONE]\n\n"))
    send(page, "Hello?")
    assert conversation(page) == [("user", "Hello?"), ("assistant", "Once upon")]
    assert page.text_content(".msg.assistant .note") == "The answer failed: internal error: RuntimeError"
    assert page.text_content("#status") == "The answer failed: internal error: RuntimeError"

    page.unroute("**/v1/chat/completions")
    page.route("**/v1/chat/completions", lambda route: route.abort("connectionreset"))  # no answer at all
    page.fill("#input", "Still there?")
    page.press("#input", "Enter")
    wait_for(page, "document.getElementById('status').textContent.startsWith('Cannot reach the server')")
    assert page.input_value("#input") == "Still there?" and len(conversation(page)) == 2


def test_an_empty_answer_is_kept_and_said(page, served):
    url, _ = served
    open_page(page, url)
    end = '{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'  # end-of-text at once
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body=f"data: {end}\n\ndata: [DONE]\n\n"))
    send(page, "Hello?")
    assert conversation(page) == [("user", "Hello?"), ("assistant", "")]
    assert page.text_content(".msg.assistant .note") == "the model answered nothing"
    assert page.text_content("#status") == "" and page.input_value("#input") == ""


def test_without_the_api_key_the_page_says_so_and_with_it_the_chat_works(page, served_with_key):
    url = served_with_key
    open_page(page, url, model_loads=False)
    status = page.text_content("#status")
    assert status.startswith("The server refused the request (401): a valid API key is needed")
    assert status.endswith("Enter the server's API key under Settings.")
    assert page.locator("#settings").get_attribute("open") == ""  # opened, where the key goes
    page.evaluate("document.getElementById('status').textContent = ''")
    page.fill("#input", "Hello?")
    page.press("#input", "Enter")  # the page asks for the model again, and is refused again
    wait_for(page, "document.getElementById('status').textContent.includes('(401)')")
    assert conversation(page) == [] and page.input_value("#input") == "Hello?"

    settings(page, api_key=KEY, temperature="0", max_tokens="8")
    sent = chat_requests(page)
    send(page, "Hello?")
    assert [role for role, _ in conversation(page)] == ["user", "assistant"]
    assert len(sent) == 1 and page.text_content("#model-info").startswith(MODEL)
    page.reload()  # the key is kept in the browser: the page finds the model at once
    wait_for(page, MODEL_SHOWN)
    assert page.input_value("#api_key") == KEY


def test_the_conversation_survives_a_reload_until_cleared(page, served):
    url, _ = served
    open_page(page, url)
    settings(page, temperature="0", max_tokens="6", system="Be kind.")
    for text in ("Hello", "Again"):
        send(page, text)
    before = conversation(page)
    assert [role for role, _ in before] == ["user", "assistant"] * 2

    page.reload()
    wait_for(page, MODEL_SHOWN)
    assert conversation(page) == before
    assert page.input_value("#max_tokens") == "6" and page.input_value("#system") == "Be kind."

    settings(page)
    page.click("#clear")
    assert conversation(page) == []
    page.reload()
    wait_for(page, MODEL_SHOWN)
    assert conversation(page) == []


def test_text_is_shown_as_text_never_run_as_html(page, served):
    url, _ = served
    open_page(page, url)
    hostile = '<img src=x onerror="window.ran=1"><b>bold</b>'
    page.evaluate("""(text) => localStorage.setItem('lmforge-chat', JSON.stringify(
        {messages: [{role: 'user', content: text}, {role: 'assistant', content: text}]}))""", hostile)
    page.reload()
    page.wait_for_selector("#log .msg")
    assert conversation(page) == [("user", hostile), ("assistant", hostile)]
    assert page.locator("#log img, #log b").count() == 0
    assert page.evaluate("window.ran") is None


def test_events_are_read_whole_however_the_bytes_are_cut(page, served):
    """The page's server-sent-events reader, fed one byte at a time: lines, events and multi-byte
    characters cut anywhere, CRLF line ends, a comment, an event of two data lines, a last event
    without its blank line."""
    url, _ = served
    open_page(page, url)
    stream = ('data: {"text": "é€😀"}\r\n\r\n: a comment\n\ndata: one\ndata: two\n\n'
              'event: ignored\ndata:no space\n\ndata: [DONE]')
    events = page.evaluate("""async (text) => {
        const bytes = new TextEncoder().encode(text);
        const body = new ReadableStream({start(controller) {
            for (const byte of bytes) controller.enqueue(new Uint8Array([byte]));
            controller.close();
        }});
        const events = [];
        for await (const data of eventData(new Response(body))) events.push(data);
        return events;
    }""", stream)
    assert events == ['{"text": "é€😀"}', "one\ntwo", "no space", "[DONE]"]

