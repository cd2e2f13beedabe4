// samsweep pages: shared helpers. No framework, no build step, nothing from another host.
// User text (study names, errors) only ever goes into the DOM as textContent.
"use strict";

const samsweep = (() => {
  const KEY = "samsweep.token";
  const isPrivate = document.body.dataset.private === "true";
  let waiting = null; // a promise resolved when the user enters a token

  function token() {
    return sessionStorage.getItem(KEY);
  }

  function showTokenState() {
    document.getElementById("token-state").hidden = !token();
  }

  function askForToken(message) {
    const panel = document.getElementById("token-panel");
    if (message) document.getElementById("token-message").textContent = message;
    panel.hidden = false;
    if (!waiting) {
      waiting = new Promise((resolve) => {
        document.getElementById("token-form").addEventListener("submit", (event) => {
          event.preventDefault();
          const input = document.getElementById("token-input");
          sessionStorage.setItem(KEY, input.value.trim());
          input.value = "";
          panel.hidden = true;
          waiting = null;
          showTokenState();
          resolve();
        }, { once: true });
      });
    }
    return waiting;
  }

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // fetch a path of this server; with a token, send it as Authorization. On 401 ask for
  // a token and try again once one is entered.
  async function get(path, as = "json") {
    for (;;) {
      if (isPrivate && !token()) await askForToken();
      const headers = {};
      if (token()) headers.Authorization = `Bearer ${token()}`;
      // no-cache: the browser keeps answers but revalidates them; the API's ETags make an
      // unchanged report or plot a 304, neither recomputed nor sent again
      const response = await fetch(path, { headers, cache: "no-cache" });
      if (response.status === 401) {
        sessionStorage.removeItem(KEY);
        showTokenState();
        await askForToken("That token was not accepted: enter a valid API token.");
        continue;
      }
      if (!response.ok) {
        let message = `${response.status}`;
        try {
          message = (await response.json()).error.message;
        } catch (_) { /* not the API's error shape */ }
        throw new HttpError(response.status, message);
      }
      if (as === "json") return response.json();
      if (as === "blob") return response.blob();
      if (as === "response") return response;
      return response.text();
    }
  }

  // an element with text content (never HTML) and attributes
  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function fmt(x, digits = 3) {
    if (x === null || x === undefined) return "–";
    return Number(x).toFixed(digits);
  }

  function meanStd(stat, digits = 3) {
    if (!stat || stat.mean === null || stat.mean === undefined) return "–";
    const m = Number(stat.mean).toFixed(digits);
    return stat.std === null || stat.std === undefined ? m : `${m} ± ${Number(stat.std).toFixed(digits)}`;
  }

  // links marked data-download: fetched with the token (a plain link cannot carry it) and
  // saved through a blob; without a token they are ordinary links.
  function wireDownloads(base) {
    for (const a of document.querySelectorAll("a[data-download]")) {
      const rel = a.dataset.download;
      a.href = rel ? `${base}/${rel}` : base;
      a.addEventListener("click", async (event) => {
        if (!token()) return;
        event.preventDefault();
        const blob = await get(a.getAttribute("href"), "blob");
        const url = URL.createObjectURL(blob);
        const save = el("a", null, { href: url, download: a.getAttribute("href").replace(/[^\w.-]+/g, "_") });
        document.body.appendChild(save);
        save.click();
        save.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    showTokenState();
    document.getElementById("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      location.reload();
    });
  });

  return { get, el, fmt, meanStd, wireDownloads, HttpError, token };
})();
