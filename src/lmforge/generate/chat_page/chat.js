// The chat page of `lmforge serve` (docs/serving.md, "Chat in the browser"). Plain ES2020, no framework:
// it uses the server's OpenAI API like any other client (GET v1/models, POST v1/chat/completions).
// Text from the model or the user only ever goes into the page through textContent, never innerHTML,
// so whatever the model writes is shown as text and never runs as HTML.
"use strict";

const STORE = "lmforge-chat"; // localStorage key: {settings, messages}; one per server address (origin)
const SETTINGS = ["system", "temperature", "top_p", "max_tokens", "api_key"]; // ids of the settings fields
const FINISH_NOTES = { length: "cut at max tokens" }; // why an answer ended, when it is worth saying

const $ = (id) => document.getElementById(id);

let model = null; // {id, maxModelLen} from GET v1/models; null until the server has told us
let messages = []; // the conversation, oldest first: {role: "user" | "assistant", content, note}
let controller = null; // the AbortController of the answer being streamed; null when ready

// ---- kept in the browser ----

function load() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORE)) || {};
  } catch {
    // unreadable (edited by hand, or another page's): start afresh
  }
  for (const id of SETTINGS) {
    if (typeof saved.settings?.[id] === "string") $(id).value = saved.settings[id];
  }
  const isMessage = (m) => ["user", "assistant"].includes(m?.role) && typeof m.content === "string";
  messages = Array.isArray(saved.messages) ? saved.messages.filter(isMessage) : [];
}

function save() {
  const settings = Object.fromEntries(SETTINGS.map((id) => [id, $(id).value]));
  try {
    localStorage.setItem(STORE, JSON.stringify({ settings, messages }));
  } catch {
    showStatus("This browser would not store the conversation (storage full or disabled).", true);
  }
}

// ---- showing things ----

function addMessageElement(message) {
  const element = document.createElement("div");
  element.className = `msg ${message.role}`;
  for (const part of ["role", "text", "note"]) {
    element.appendChild(document.createElement("div")).className = part;
  }
  element.querySelector(".role").textContent = message.role === "user" ? "You" : "Assistant";
  showMessage(element, message);
  $("log").appendChild(element);
  return element;
}

function showMessage(element, message) {
  element.querySelector(".text").textContent = message.content;
  element.querySelector(".note").textContent = message.note || "";
  $("log").scrollTop = $("log").scrollHeight;
}

function showAll() {
  $("log").replaceChildren();
  messages.forEach(addMessageElement);
}

function showStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showModel() {
  $("model-info").textContent = model ? `${model.id} · context ${model.maxModelLen} tokens` : "not connected";
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("clear").disabled = busy; // Stop first: the answer being streamed still belongs to the conversation
  document.body.classList.toggle("busy", busy);
}

// ---- talking to the server ----

function headers() {
  const key = $("api_key").value.trim();
  return key ? { "Content-Type": "application/json", Authorization: `Bearer ${key}` }
    : { "Content-Type": "application/json" };
}

// What to tell the user when the server refuses a request (400, 401, 413, 429, ...): its own words,
// which OpenAI's error body carries as {"error": {"message": ...}}.
async function refusal(response) {
  let message = response.statusText;
  try {
    message = (await response.json()).error.message || message;
  } catch {
    // not an error body (a proxy's page?): the status line says enough
  }
  const hint = response.status === 401 ? " Enter the server's API key under Settings." : "";
  if (response.status === 401) $("settings").open = true; // where the key goes
  return `The server refused the request (${response.status}): ${message}${hint}`;
}

async function loadModel() {
  try {
    const response = await fetch("v1/models", { headers: headers() });
    if (!response.ok) {
      model = null;
      showStatus(await refusal(response), true);
    } else {
      const entry = (await response.json()).data[0];
      model = { id: entry.id, maxModelLen: entry.max_model_len };
      showStatus("");
    }
  } catch (error) {
    model = null;
    showStatus(`Cannot reach the server: ${error.message}`, true);
  }
  showModel();
}

function requestBody() {
  const system = $("system").value;
  const history = messages.map(({ role, content }) => ({ role, content }));
  const body = {
    model: model.id,
    messages: system.trim() ? [{ role: "system", content: system }, ...history] : history,
    stream: true,
  };
  for (const id of ["temperature", "top_p", "max_tokens"]) {
    const value = $(id).value.trim();
    if (value !== "") body[id] = Number(value); // left empty: the server's default
  }
  return body;
}

// The data of each server-sent event. A network chunk may end anywhere, inside a line or even inside
// a multi-byte character, so bytes are decoded as a stream and only whole lines are read; the rest
// waits for the next chunk. An event is its `data:` lines, ended by a blank line.
async function* eventData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = done ? "" : lines.pop(); // the last line may be incomplete
      for (const line of lines.map((l) => l.replace(/\r$/, ""))) {
        if (line === "" && data.length) {
          yield data.join("\n");
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        } // other fields (event:, id:) and comments (":...") are not used by this server
      }
      if (done) {
        if (data.length) yield data.join("\n"); // a last event without its blank line
        return;
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // stopped early (Stop, an error): let the connection go
  }
}

// Stream an answer into `answer`, calling `onText` as text arrives; resolves to the finish reason.
async function streamAnswer(response, answer, onText) {
  let finishReason = null;
  for await (const data of eventData(response)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(`The answer failed: ${chunk.error.message}`); // after it had begun
    const choice = chunk.choices?.[0];
    if (choice?.delta?.content) {
      answer.content += choice.delta.content;
      onText();
    }
    finishReason = choice?.finish_reason || finishReason;
  }
  return finishReason;
}

async function send(event) {
  event.preventDefault();
  const content = $("input").value;
  if (controller || !content.trim()) return;
  if (!model) await loadModel();
  if (!model) return; // the status line says why
  const question = { role: "user", content };
  const answer = { role: "assistant", content: "", note: "" };
  messages.push(question);
  const questionElement = addMessageElement(question);
  const answerElement = addMessageElement(answer);
  $("input").value = "";
  showStatus("");
  controller = new AbortController();
  setBusy(true);
  let answered = false; // the answer came to its end (possibly an empty one)
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await refusal(response));
    const finishReason = await streamAnswer(response, answer, () => showMessage(answerElement, answer));
    answered = true;
    answer.note = answer.content ? FINISH_NOTES[finishReason] || "" : "the model answered nothing";
  } catch (error) {
    const stopped = error.name === "AbortError";
    // fetch rejects with a TypeError when no answer comes at all (server down, connection lost)
    const message = error instanceof TypeError ? `Cannot reach the server: ${error.message}` : error.message;
    answer.note = stopped ? "stopped" : message;
    showStatus(stopped ? "Stopped." : message, !stopped);
  } finally {
    controller = null;
    if (answered || answer.content) {
      messages.push(answer); // kept with whatever arrived, a partial answer too
    } else {
      // Nothing was answered (refused, failed or stopped first): take the message back, to send again.
      messages.pop();
      questionElement.remove();
      answerElement.remove();
      if (!$("input").value) $("input").value = content;
    }
    showMessage(answerElement, answer);
    save();
    setBusy(false);
    $("input").focus();
  }
}

function clearConversation() {
  messages = [];
  save();
  showAll();
  showStatus("");
}

// ---- wiring ----

load();
showAll();
loadModel();
$("composer").addEventListener("submit", send);
$("stop").addEventListener("click", () => controller?.abort());
$("clear").addEventListener("click", clearConversation);
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
for (const id of SETTINGS) $(id).addEventListener("input", save);
$("api_key").addEventListener("change", loadModel); // a new key: ask for the model again
$("settings-form").addEventListener("submit", (event) => { // Enter in a settings field
  event.preventDefault();
  loadModel();
});
