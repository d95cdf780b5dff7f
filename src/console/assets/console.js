// flowgate console: the little HTML cannot do alone. Served from the
// console itself (the Content-Security-Policy allows no inline script).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Times: shown in the viewer's own zone; the UTC time stays in the title.
  for (const el of document.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(at.getTime())) {
      el.textContent = at.toLocaleString();
    }
  }

  // Webhook URLs are shown whole: this origin plus the flow's path.
  for (const el of document.querySelectorAll("[data-origin-path]")) {
    el.textContent = window.location.origin + el.getAttribute("data-origin-path");
  }

  // Copy buttons copy the text (or value) of the element they name.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.querySelector(button.getAttribute("data-copy"));
      if (!source) return;
      const text = "value" in source ? source.value : source.textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch {
        if ("select" in source) source.select();
        button.textContent = "Press Ctrl+C";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }

  // A sign-in link carries its one-time code after "#", which never
  // reaches a server log: post it, then drop it from the address bar.
  // (A link opened on this very page changes only the "#" part.)
  useSignInLink();
  window.addEventListener("hashchange", useSignInLink);
});

function useSignInLink() {
  const form = document.getElementById("sign-in");
  const code = new URLSearchParams(window.location.hash.slice(1)).get("link");
  if (form && code) {
    history.replaceState(null, "", window.location.pathname);
    document.getElementById("link").value = code;
    form.submit();
  }
}
