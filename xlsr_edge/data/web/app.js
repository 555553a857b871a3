// The page: microphone -> AudioWorklet (16 kHz s16le) -> the server's WebSocket protocol; files -> the
// OpenAI-compatible HTTP endpoint. No external assets, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const base = new URL(".", location.href); // works behind a path prefix too
const query = new URLSearchParams(location.search);
if (query.get("token")) $("key").value = query.get("token");

let live = null; // {media, ctx, source, node, ws} while the microphone is on

function apiKey() {
  return $("key").value.trim();
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showEvent(event) {
  if (event.type === "partial") {
    $("partial").textContent = event.text;
  } else if (event.type === "final") {
    const li = document.createElement("li");
    li.className = "final";
    li.dataset.start = event.start;
    li.dataset.end = event.end;
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = `${event.start.toFixed(2)}–${event.end.toFixed(2)} s`;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = event.text;
    li.append(time, text);
    $("finals").appendChild(li);
    $("partial").textContent = "";
  } else if (event.type === "error") {
    setStatus("error: " + event.error, true);
  }
}

async function start() {
  $("start").disabled = true;
  try {
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule(new URL("web/worklet.js", base));
    const source = ctx.createMediaStreamSource(media);
    const node = new AudioWorkletNode(ctx, "pcm16k");
    const url = new URL(base);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (apiKey()) url.searchParams.set("token", apiKey());
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    live = { media, ctx, source, node, ws };
    ws.onopen = () => {
      ws.send(JSON.stringify({ config: { sample_rate: 16000 } }));
      node.port.onmessage = (message) => {
        if (ws.readyState !== WebSocket.OPEN) return;
        if (message.data === "flushed") ws.send(JSON.stringify({ eof: true }));
        else ws.send(message.data);
      };
      source.connect(node);
      node.connect(ctx.destination); // silent: the worklet writes nothing to its output
      $("stop").disabled = false;
      setStatus("listening (" + ctx.sampleRate + " Hz)");
    };
    ws.onmessage = (message) => showEvent(JSON.parse(message.data));
    ws.onclose = (close) => {
      if (close.code !== 1000) setStatus(`closed: ${close.code} ${close.reason}`, true);
      else setStatus("done");
      teardown();
    };
  } catch (err) {
    setStatus("microphone: " + err.message, true);
    teardown();
  }
}

function stop() {
  if (!live) return;
  $("stop").disabled = true;
  setStatus("finishing");
  live.source.disconnect();
  live.media.getTracks().forEach((t) => t.stop());
  live.node.port.postMessage("flush"); // the worklet posts what it holds, then "flushed" -> eof
}

function teardown() {
  if (live) {
    live.media.getTracks().forEach((t) => t.stop());
    live.ctx.close();
    live = null;
  }
  $("partial").textContent = "";
  $("start").disabled = false;
  $("stop").disabled = true;
}

async function upload() {
  const file = $("file").files[0];
  if (!file) return;
  const out = $("transcript");
  out.className = "busy";
  out.textContent = `transcribing ${file.name} …`;
  const form = new FormData();
  form.append("file", file);
  form.append("model", $("model").value || "default");
  const headers = apiKey() ? { Authorization: "Bearer " + apiKey() } : {};
  try {
    const response = await fetch(new URL("v1/audio/transcriptions", base), { method: "POST", body: form, headers });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    out.textContent = body.text;
    out.className = "done";
  } catch (err) {
    out.textContent = "error: " + err.message;
    out.className = "error";
  }
}

async function loadModels() {
  const headers = apiKey() ? { Authorization: "Bearer " + apiKey() } : {};
  try {
    const response = await fetch(new URL("v1/models", base), { headers });
    if (!response.ok) return;
    const select = $("model");
    select.replaceChildren();
    for (const m of (await response.json()).data) select.append(new Option(m.id, m.id));
  } catch (err) {
    // the model list is a convenience: uploads fall back to the server's only or first model
  }
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("file").addEventListener("change", upload);
$("key").addEventListener("change", loadModels);
loadModels();
