// The prosody_vae page: one form, the JSON API, and a history of results drawn on canvases.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { card: null, token: sessionStorage.getItem("prosody-vae-token"), busy: false,
                referenceA: null, referenceB: null, recorder: null, count: 0 };

// ------------------------------------------------------------------------------ the API
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    const token = window.prompt("This server needs an access token:");
    if (token) {
      state.token = token;
      sessionStorage.setItem("prosody-vae-token", token);
      return api(path, options);
    }
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || { field: "response", message: response.statusText };
    const retry = response.headers.get("Retry-After");
    throw new Error(`${error.field}: ${error.message}${retry ? ` (retry in ${retry} s)` : ""}`);
  }
  return body;
}

const postJSON = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                              body: JSON.stringify(body) });

// ------------------------------------------------------------------------------ busy state
function setBusy(busy, message) {
  state.busy = busy;
  for (const id of ["synthesize", "variations", "interpolate"]) $(id).disabled = busy;
  $("interpolate").disabled = busy || !(state.referenceA && state.referenceB);
  $("progress").hidden = !busy;
  $("controls").setAttribute("aria-busy", String(busy));
  if (message) status(message);
}

function status(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function run(label, work) {
  if (state.busy) return;  // no double submission
  const started = performance.now();
  setBusy(true, `${label}…`);
  const tick = setInterval(() => status(`${label}… ${((performance.now() - started) / 1000).toFixed(1)} s`), 200);
  try {
    await work();
    status(`${label}: done in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
  } catch (error) {
    status(`${label} failed: ${error.message}`, true);
  } finally {
    clearInterval(tick);
    setBusy(false);
  }
}

// ------------------------------------------------------------------------------ the model card
const KNOB_STEPS = 20;

function buildKnobs(card) {
  const server = card.server;
  const knobs = server.knobs || {};
  const sliders = $("knob-sliders");
  sliders.replaceChildren();
  const units = { semitones: "st", ratio: "×", dB: "dB" };
  for (const [name, range] of Object.entries(knobs)) {
    const id = `knob-${name}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.innerHTML = `${name.replace("_", " ")} (${units[range.unit] || range.unit}) <output for="${id}" id="${id}-value"></output>`;
    // positions -STEPS..STEPS: neutral (0) exact, each side of it in STEPS equal steps to its end
    const input = Object.assign(document.createElement("input"), { type: "range", id, min: -KNOB_STEPS,
      max: KNOB_STEPS, step: 1, value: 0 });
    input.dataset.knob = name;
    input.knobValue = () => {
      const position = Number(input.value) / KNOB_STEPS;
      const value = range.default + position * (position < 0 ? range.default - range.min : range.max - range.default);
      return Math.min(range.max, Math.max(range.min, value));  // rounding must not step outside the range
    };
    const show = () => { $(`${id}-value`).textContent = input.knobValue().toFixed(2); };
    input.addEventListener("input", show);
    sliders.append(label, input);
    show();  // after append: the output element is found by id
  }
  $("knobs-note").hidden = Object.keys(knobs).length > 0;
  $("calibrate-command").textContent = server.calibrate_command || "";
  const vocoder = $("vocoder");
  vocoder.replaceChildren(new Option(`default (${server.vocoder})`, ""),
                          ...server.vocoders.map((name) => new Option(name, name)));
  buildVoices(card.speakers || [], card.reference_input);
  const speakers = card.speakers && card.speakers.length ? `, ${card.speakers.length} speakers` : "";
  $("model-summary").textContent = `latent ${card.latent_dim ?? "?"} dims${speakers}, ` +
    `${server.sample_rate} Hz, vocoder ${server.vocoder}.`;
}

function buildVoices(names, reads) {  // a single-speaker model has no voices to choose
  $("voices").hidden = names.length === 0;
  $("speaker").replaceChildren(...names.map((name) => new Option(name, name)));
  // what the synthesizer assumes of an unnamed reference depends on what its encoder reads
  const unnamed = reads === "prosody" ? "unnamed (the voice of nearest pitch register)" : "unnamed (the output's voice)";
  $("reference-speaker").replaceChildren(new Option(unnamed, ""), ...names.map((name) => new Option(name, name)));
}

// ------------------------------------------------------------------------------ requests
function options() {
  const body = { text: $("text").value, temperature: Number($("temperature").value),
                 seed: Math.max(0, Math.floor(Number($("seed").value) || 0)), format: "json",
                 include: ["mel", "f0", "alignment"] };
  if (!$("voices").hidden) body.speaker = $("speaker").value;
  if (state.referenceA) {
    body.reference_id = state.referenceA.id;
    body.mode = $("reference-mode").value;
    if (!$("voices").hidden && $("reference-speaker").value) body.reference_speaker = $("reference-speaker").value;
    if (!$("voices").hidden && $("pitch-mode").value !== "relative") body.pitch_mode = $("pitch-mode").value;
  }
  if ($("vocoder").value) body.vocoder = $("vocoder").value;
  const controls = {};
  for (const input of document.querySelectorAll("#knob-sliders input")) {
    if (Number(input.value) !== 0) controls[input.dataset.knob] = input.knobValue();
  }
  if (Object.keys(controls).length) body.controls = controls;
  if (Number($("strength").value) !== 1) body.strength = Number($("strength").value);
  return body;
}

function describe(body) {
  const parts = [body.reference_id ? `reference ${body.mode}` : "prior sample", `T ${body.temperature}`];
  if (body.speaker) parts.unshift(`voice ${body.speaker}`);
  if (body.reference_speaker) parts.push(`reference voice ${body.reference_speaker}`);
  if (body.pitch_mode) parts.push(`${body.pitch_mode} pitch`);
  if (body.seed !== undefined) parts.push(`seed ${body.seed}`);
  for (const [name, value] of Object.entries(body.controls || {})) parts.push(`${name} ${value.toFixed(2)}`);
  if (body.strength !== undefined) parts.push(`strength ${body.strength}`);
  if (body.vocoder) parts.push(body.vocoder);
  return parts.join(", ");
}

async function synthesize() {
  const body = options();
  const answer = await postJSON("/v1/synthesize", body);
  answer.results.forEach((result) => addResult(body.text, describe(body), result, answer.sample_rate));
}

async function variations() {
  const body = options();
  const n = Math.min(8, Math.max(2, Math.floor(Number($("n-samples").value) || 4)));
  body.n_samples = n;
  if (body.reference_id) body.mode = "sample";
  const answer = await postJSON("/v1/synthesize", body);
  answer.results.forEach((result, i) => addResult(body.text, `${describe(body)}, variation ${i + 1}/${n}`,
                                                   result, answer.sample_rate));
}

async function interpolate() {
  const steps = Math.min(8, Math.max(2, Math.floor(Number($("steps").value) || 5)));
  const body = { text: $("text").value, reference_a: state.referenceA.id, reference_b: state.referenceB.id,
                 steps, seed: Number($("seed").value) || 0, include: ["mel", "f0", "alignment"] };
  if (!$("voices").hidden) body.speaker = $("speaker").value;
  if ($("vocoder").value) body.vocoder = $("vocoder").value;
  const answer = await postJSON("/v1/interpolate", body);
  answer.results.forEach((result, i) => addResult(body.text, `A → B, step ${i + 1}/${steps}`, result,
                                                   answer.sample_rate));
}

// ------------------------------------------------------------------------------ references
async function upload(blob, name, which) {
  const form = new FormData();
  form.append("reference", blob, name);
  const info = await api("/v1/encode", { method: "POST", body: form });
  state[which] = { id: info.reference_id, name };
  const line = `${name}: ${info.duration_s.toFixed(2)} s, KL ${info.kl_nats.toFixed(2)} nats (id ${info.reference_id}).`;
  $(which === "referenceA" ? "reference-status" : "reference-b-status").textContent = line;
}

function encodeWav(buffer) {  // AudioBuffer -> 16-bit mono WAV Blob (MediaRecorder gives webm/ogg)
  const samples = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    buffer.getChannelData(c).forEach((v, i) => { samples[i] += v / buffer.numberOfChannels; });
  }
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVEfmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, buffer.sampleRate, true); view.setUint32(28, buffer.sampleRate * 2, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true); text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((v, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, v)) * 0x7fff, true));
  return new Blob([view], { type: "audio/wav" });
}

async function toggleRecording() {
  const button = $("record");
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    status("This browser cannot record (MediaRecorder needs https or localhost).", true);
    return;
  }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  state.recorder = new MediaRecorder(stream);
  state.recorder.ondataavailable = (event) => chunks.push(event.data);
  state.recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    state.recorder = null;
    button.textContent = "Record with the microphone";
    button.setAttribute("aria-pressed", "false");
    run("Uploading the recording", async () => {
      const decoded = await new AudioContext().decodeAudioData(await new Blob(chunks).arrayBuffer());
      await upload(encodeWav(decoded), "recording.wav", "referenceA");
    });
  };
  state.recorder.start();
  button.textContent = "Stop recording";
  button.setAttribute("aria-pressed", "true");
}

// ------------------------------------------------------------------------------ results
function base64ToBlob(data, type) {
  const bytes = Uint8Array.from(atob(data), (ch) => ch.charCodeAt(0));
  return new Blob([bytes], { type });
}

function color(v) {  // 0..1 -> a dark-blue to yellow ramp
  return [Math.round(255 * Math.min(1, v * 1.6)), Math.round(255 * v ** 0.8), Math.round(255 * (1 - v) * 0.6 + 40)];
}

function heatmap(canvas, rows) {  // rows (T, bins): time left to right, bin 0 at the bottom
  const width = rows.length, height = rows[0] ? rows[0].length : 0;
  if (!width || !height) return;
  canvas.width = width; canvas.height = height;
  let lo = Infinity, hi = -Infinity;
  for (const row of rows) for (const value of row) { lo = Math.min(lo, value); hi = Math.max(hi, value); }
  const span = hi - lo || 1;
  const image = canvas.getContext("2d").createImageData(width, height);
  rows.forEach((row, x) => row.forEach((value, bin) => {
    image.data.set([...color((value - lo) / span), 255], 4 * ((height - 1 - bin) * width + x));
  }));
  canvas.getContext("2d").putImageData(image, 0, 0);
}

function drawF0(canvas, f0) {  // the F0 track over the mel, 0-500 Hz full height
  if (!f0) return;
  const context = canvas.getContext("2d");
  context.strokeStyle = "#ff4081"; context.lineWidth = 1.5; context.beginPath();
  let drawing = false;
  f0.forEach((hz, t) => {
    const y = canvas.height * (1 - Math.min(hz, 500) / 500);
    if (hz > 0 && drawing) context.lineTo(t, y); else if (hz > 0) context.moveTo(t, y);
    drawing = hz > 0;
  });
  context.stroke();
}

function addResult(text, params, result, sampleRate) {
  state.count += 1;
  const item = document.createElement("li");
  item.dataset.duration = result.duration_s;
  const title = document.createElement("h3");
  title.textContent = `#${state.count}: ${text}`;
  const info = document.createElement("p");
  info.className = "params";
  info.textContent = `${params}; ${result.duration_s.toFixed(2)} s at ${sampleRate} Hz` +
    `${result.hit_max_steps ? ", no stop token (cut at the step limit)" : ""}`;
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.src = URL.createObjectURL(base64ToBlob(result.audio_wav_base64, "audio/wav"));
  audio.setAttribute("aria-label", `result ${state.count}`);
  const mel = document.createElement("canvas");
  mel.setAttribute("aria-label", "mel spectrogram with the F0 track");
  mel.setAttribute("role", "img");
  const alignment = document.createElement("canvas");
  alignment.className = "alignment";
  alignment.setAttribute("aria-label", "attention alignment: decoder steps by characters");
  alignment.setAttribute("role", "img");
  item.append(title, info, audio, mel, alignment);
  $("history").prepend(item);
  if (result.mel) heatmap(mel, result.mel);
  drawF0(mel, result.f0_hz);
  if (result.alignment) heatmap(alignment, result.alignment);
}

// ------------------------------------------------------------------------------ wiring
function wire() {
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); run("Synthesizing", synthesize); });
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("controls").requestSubmit();
  });
  $("variations").addEventListener("click", () => run("Sampling variations", variations));
  $("interpolate").addEventListener("click", () => run("Interpolating", interpolate));
  $("record").addEventListener("click", () => toggleRecording().catch((e) => status(e.message, true)));
  $("clear-reference").addEventListener("click", () => {
    state.referenceA = null;
    $("reference-file").value = "";
    $("reference-status").textContent = "No reference: the prosody is a sample of the prior.";
    setBusy(state.busy);
  });
  $("clear-history").addEventListener("click", () => $("history").replaceChildren());
  $("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
  for (const [input, which] of [["reference-file", "referenceA"], ["reference-b-file", "referenceB"]]) {
    $(input).addEventListener("change", () => {
      const file = $(input).files[0];
      if (file) run("Uploading the reference", () => upload(file, file.name, which));
    });
  }
}

async function start() {
  wire();
  setBusy(false);
  try {
    state.card = await api("/v1/model");
    buildKnobs(state.card);
  } catch (error) {
    $("model-summary").textContent = `Cannot read the model card: ${error.message}`;
  }
}

document.addEventListener("DOMContentLoaded", start);
