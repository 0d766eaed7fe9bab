// flash-vstream serve: plays a video file (or the webcam) and posts frames of it to this tab's stream session
// at the server's rate (fps frames per second of video time, on a k / fps grid), asks questions, draws the
// memory timeline. Nothing but those frames leaves the browser.
"use strict";

const $ = (id) => document.getElementById(id);
const tab = { id: null, info: null, nextDue: 0, lastSent: -1, inFlight: false, camera: null, cameraStart: 0,
              stream: 0 };

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }

async function start() {
  try {
    tab.info = await api("/api/info");
    $("model").textContent = `model ${tab.info.model} (${tab.info.family}) · ${tab.info.fps} frame/s to the memory`;
    tab.id = (await api("/api/sessions", { method: "POST" })).id;
    $("status").textContent = "ready: choose a video";
  } catch (err) {
    $("model").textContent = "no session";
    showError(err);
    return;
  }
  window.addEventListener("pagehide", () => navigator.sendBeacon(`/api/sessions/${tab.id}/close`));
  setInterval(captureTick, 40);
  setInterval(refreshTimeline, 1000);
}

async function newStream() {
  tab.nextDue = 0;
  tab.lastSent = -1;
  tab.stream += 1;
  await api(`/api/sessions/${tab.id}/reset`, { method: "POST" });
  $("answers").innerHTML = "";
  drawTimeline(null);
}

$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file || !tab.id) return;
  stopCamera();
  showError(null);
  await newStream();
  const video = $("video");
  video.srcObject = null;
  video.src = URL.createObjectURL(file);
  video.muted = true;
  $("status").textContent = `playing ${file.name}`;
  video.play().catch(showError);
});

$("camera").addEventListener("click", async () => {
  if (!tab.id) return;
  try {
    const media = await navigator.mediaDevices.getUserMedia({ video: true });
    await newStream();
    tab.camera = media;
    tab.cameraStart = performance.now();
    const video = $("video");
    video.removeAttribute("src");
    video.srcObject = media;
    $("status").textContent = "webcam";
    await video.play();
  } catch (err) {
    showError(`the webcam is not available here (${err.message || err}); choose a video file instead`);
  }
});

function stopCamera() {
  if (tab.camera) tab.camera.getTracks().forEach((track) => track.stop());
  tab.camera = null;
}

$("video").addEventListener("seeking", () => {
  // The stream's times must not go backwards: seeking back starts a new stream.
  if ($("video").currentTime < tab.lastSent) newStream().catch(showError);
});

function streamTime() {
  return tab.camera ? (performance.now() - tab.cameraStart) / 1000 : $("video").currentTime;
}

function captureTick() {
  const video = $("video");
  if (tab.inFlight || video.readyState < 2 || (video.paused && !video.ended) || !video.videoWidth) return;
  const t = streamTime();
  if (t + 1e-6 < tab.nextDue || t <= tab.lastSent) return;
  tab.nextDue = (Math.floor(t * tab.info.fps + 1e-6) + 1) / tab.info.fps;
  sendFrame(video, t);
}

function sendFrame(video, t) {
  const scale = Math.min(1, tab.info.frame_side / Math.max(video.videoWidth, video.videoHeight));
  const canvas = $("canvas");
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  tab.inFlight = true;
  tab.lastSent = t;
  const stream = tab.stream;
  canvas.toBlob(async (blob) => {
    try {
      if (stream !== tab.stream) return;
      const stats = await api(`/api/sessions/${tab.id}/frames?t=${t.toFixed(3)}`,
                              { method: "POST", headers: { "Content-Type": "image/jpeg" }, body: blob });
      showStats(stats);
    } catch (err) {
      showError(err);
    } finally {
      tab.inFlight = false;
    }
  }, "image/jpeg", 0.9);
}

function showStats(stats) {
  $("stats").textContent = `stream ${stats.stream_time.toFixed(1)} s | frames ${stats.frames_seen} seen, ` +
    `${stats.frames_queued} queued, ${stats.frames_dropped} dropped | ingest ${stats.ingest_fps} fps`;
}

$("ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  const item = document.createElement("li");
  item.innerHTML = `<div class="q"></div><div class="answer-text">…</div><div class="meta"></div>`;
  item.querySelector(".q").textContent = question;
  $("answers").prepend(item);
  $("question").value = "";
  try {
    const answer = await api(`/api/sessions/${tab.id}/ask`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ question }) });
    item.querySelector(".answer-text").textContent = answer.answer;
    item.querySelector(".meta").textContent =
      `at ${answer.stream_time.toFixed(1)} s of stream, ${answer.frames_seen} frames | first token ` +
      `${(answer.first_token_seconds * 1000).toFixed(0)} ms, answer ${(answer.total_seconds * 1000).toFixed(0)} ms`;
    item.classList.add("answered");
    drawTimeline(answer.timeline);
  } catch (err) {
    item.querySelector(".answer-text").textContent = "";
    item.querySelector(".meta").textContent = String(err.message || err);
    item.classList.add("failed");
  }
});

async function refreshTimeline() {
  if (!tab.id) return;
  try {
    const now = await api(`/api/sessions/${tab.id}/timeline`);
    showStats(now);
    if (now.timeline) drawTimeline(now.timeline);
  } catch (err) {
    showError(err);
  }
}

function drawTimeline(timeline) {
  const svg = $("timeline");
  const thumbs = $("thumbs");
  svg.innerHTML = "";
  thumbs.innerHTML = "";
  if (!timeline) return;
  const start = timeline.start_seconds;
  const span = Math.max(timeline.end_seconds - start, 1e-6);
  const x = (seconds) => 10 + 980 * (seconds - start) / span;
  const top = Math.max(1, ...timeline.clusters.map((c) => c.weight));
  const shape = (name, attributes) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    svg.appendChild(node);
    return node;
  };
  for (const cluster of timeline.clusters) {
    const height = 100 * cluster.weight / top;
    shape("rect", { x: x(cluster.seconds) - 3, y: 110 - height, width: 6, height, fill: "#3b78c4", class: "cluster" })
      .appendChild(document.createElementNS("http://www.w3.org/2000/svg", "title")).textContent =
        `${cluster.seconds} s, weight ${cluster.weight}`;
  }
  const marks = [...timeline.retrieved.map((f) => [f, "retrieved", "#d33"]),
                 ...timeline.recent.map((f) => [f, "recent", "#2a2"])];
  for (const [frame, kind, colour] of marks) {
    shape("line", { x1: x(frame.seconds), x2: x(frame.seconds), y1: 5, y2: 115, stroke: colour, "stroke-width": 2,
                    class: kind });
    if (frame.thumbnail === null) continue;
    const figure = document.createElement("figure");
    figure.className = kind;
    figure.innerHTML = `<img alt=""><figcaption></figcaption>`;
    figure.querySelector("img").src =
      `/api/sessions/${tab.id}/thumbnails/${frame.thumbnail}.png?stream=${tab.stream}`;
    figure.querySelector("figcaption").textContent = `${kind} #${frame.frame}, ${frame.seconds.toFixed(1)} s`;
    thumbs.appendChild(figure);
  }
}

start();
