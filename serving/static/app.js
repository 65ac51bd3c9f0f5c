// dvdm web page: no framework, no build step, nothing loaded from elsewhere (CSP: 'self' only).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("generate-form");
  const button = $("generate");
  const progress = $("progress");
  const errorBox = $("error");
  const video = $("result-video");
  const gif = $("result-gif");
  let resultUrl = null;
  let previewUrl = null;

  // The API key of a server that needs one: typed once, kept in this tab (sessionStorage: gone with the tab,
  // never sent anywhere but this server), sent as a bearer token. A header, unlike a cookie, is not sent by
  // forms on other sites.
  const TOKEN_KEY = "dvdm-api-token";
  let token = "";
  try {
    token = sessionStorage.getItem(TOKEN_KEY) || "";
  } catch (e) {
    // storage disabled: the token lasts as long as the page
  }

  function saveToken(value) {
    token = value;
    try {
      if (value) {
        sessionStorage.setItem(TOKEN_KEY, value);
      } else {
        sessionStorage.removeItem(TOKEN_KEY);
      }
    } catch (e) {
      // storage disabled: kept in memory only
    }
  }

  function withToken(options) {
    return token ? Object.assign({}, options, { headers: { Authorization: "Bearer " + token } }) : options;
  }

  function askForTokenIfNeeded(response) {
    if (response.status === 401) {
      $("token-form").hidden = false;
    }
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.textContent = "";
    errorBox.hidden = true;
  }

  // What the API said went wrong: {"detail": "..."} (a string, or FastAPI's list of problems).
  async function errorMessage(response) {
    let detail = response.statusText || "request failed";
    try {
      const body = await response.json();
      if (typeof body.detail === "string") {
        detail = body.detail;
      } else if (Array.isArray(body.detail)) {
        detail = body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
      }
    } catch (e) {
      // not JSON: keep the status text
    }
    let message = "Error " + response.status + ": " + detail;
    const retry = response.headers.get("Retry-After");
    if (retry) {
      message += " (retry in " + retry + " s)";
    }
    return message;
  }

  function describeModel(m) {
    const name = m.name ? m.name + " " : "";
    const version = m.version ? "v" + m.version : "local export";
    const alias = m.alias ? " (" + m.alias + ")" : "";
    const s = m.manifest || {};
    return "Serving " + name + version + alias + " \u00b7 " + s.space + " " + s.frames + "\u00d7" + s.height +
      "\u00d7" + s.width + " \u00b7 " + m.provider;
  }

  let limitsApplied = false;

  async function loadModel() {
    try {
      const response = await fetch("/v1/model", withToken({ cache: "no-store" }));
      if (!response.ok) {
        askForTokenIfNeeded(response);
        $("model-status").textContent = await errorMessage(response);
        return;
      }
      const m = await response.json();
      $("model-status").textContent = describeModel(m);
      $("model-status").dataset.version = m.version || "local";
      if (!limitsApplied) {  // once: do not overwrite what the user typed
        limitsApplied = true;
        const steps = $("steps");
        steps.max = m.limits.max_steps;
        steps.value = m.defaults.steps;
        const guidance = $("guidance");
        guidance.min = m.limits.guidance[0];
        guidance.max = m.limits.guidance[1];
        guidance.value = m.defaults.guidance;
        $("prompt").maxLength = m.limits.max_prompt_chars;
        if (!m.manifest.text) {
          $("prompt").placeholder = "this model takes no prompt";
        }
      }
    } catch (e) {
      $("model-status").textContent = "The server is not reachable: " + e;
    }
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveToken($("token").value.trim());
    $("token").value = "";
    clearError();
    loadModel();
  });

  $("image").addEventListener("change", () => {
    const file = $("image").files[0];
    const preview = $("preview");
    if (previewUrl) {
      URL.revokeObjectURL(previewUrl);
      previewUrl = null;
    }
    if (file) {
      previewUrl = URL.createObjectURL(file);
      preview.src = previewUrl;
      preview.hidden = false;
    } else {
      preview.hidden = true;
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const file = $("image").files[0];
    if (!file) {
      showError("Choose an image first.");
      return;
    }
    const data = new FormData();
    data.append("image", file);
    data.append("prompt", $("prompt").value);
    for (const name of ["steps", "guidance", "seed"]) {
      const value = $(name).value.trim();
      if (value !== "") {
        data.append(name, value);
      }
    }
    const format = $("format").value;
    data.append("format", format);

    button.disabled = true;
    progress.textContent = "Generating\u2026";
    const started = performance.now();
    try {
      const response = await fetch("/v1/generate", withToken({ method: "POST", body: data }));
      if (!response.ok) {
        askForTokenIfNeeded(response);
        showError(await errorMessage(response));
        return;
      }
      const blob = await response.blob();
      if (resultUrl) {
        URL.revokeObjectURL(resultUrl);
      }
      resultUrl = URL.createObjectURL(blob);
      const h = response.headers;
      const label = h.get("X-Model-Version") || "?";
      const version = label === "local" ? "a local export" : "v" + label;
      const alias = h.get("X-Model-Alias") ? " (" + h.get("X-Model-Alias") + ")" : "";
      const name = h.get("X-Model-Name") ? h.get("X-Model-Name") + " " : "";
      const made = $("made-by");
      made.textContent = "Made by model " + name + version + alias + " \u00b7 seed " + h.get("X-Seed") +
        " \u00b7 " + h.get("X-Steps") + " steps \u00b7 guidance " + h.get("X-Guidance") + " \u00b7 " +
        h.get("X-Generation-Seconds") + " s on the server (" +
        ((performance.now() - started) / 1000).toFixed(2) + " s here)";
      made.dataset.version = label;
      if (format === "mp4") {
        gif.hidden = true;
        gif.removeAttribute("src");
        video.src = resultUrl;
        video.hidden = false;
        video.play().catch(() => {});  // autoplay may be refused; the controls are there
      } else {
        video.pause();
        video.removeAttribute("src");
        video.hidden = true;
        gif.src = resultUrl;
        gif.hidden = false;
      }
      const download = $("download");
      download.href = resultUrl;
      download.download = "dvdm-" + label + "-seed" + h.get("X-Seed") + "." + format;
      $("result").hidden = false;
      loadModel();  // the model may have been swapped since the page loaded
    } catch (e) {
      showError("The request failed: " + e);
    } finally {
      button.disabled = false;
      progress.textContent = "";
    }
  });

  loadModel();
  setInterval(loadModel, 30000);
})();
