// Live parts of the dashboard: every element with data-refresh="<url>" polls that server-rendered
// HTML fragment every 2 s and swaps it in without reloading the page. Polling pauses while the tab
// is hidden, stops once a fragment says it is final (data-final), keeps the keyboard focus where
// it was, and sends the browser to the sign-in page when the session has ended.
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function focusKey(el) {
    if (!el || el === document.body) { return null; }
    if (el.id) { return "#" + CSS.escape(el.id); }
    var href = el.getAttribute && el.getAttribute("href");
    return href ? el.tagName.toLowerCase() + '[href="' + CSS.escape(href) + '"]' : null;
  }

  function live(el) {
    var url = el.getAttribute("data-refresh");
    var busy = false;
    var timer = null;

    function tick() {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" }, cache: "no-store" })
        .then(function (r) {
          if (r.status === 401) {
            window.location.assign(el.getAttribute("data-login") || "/admin/login");
            throw new Error("signed out");
          }
          if (!r.ok) { throw new Error("refresh failed: " + r.status); }
          return r.text();
        })
        .then(function (html) {
          if (html !== el.innerHTML) {
            var key = el.contains(document.activeElement) ? focusKey(document.activeElement) : null;
            el.innerHTML = html;
            if (key) { var again = el.querySelector(key); if (again) { again.focus(); } }
            el.dispatchEvent(new CustomEvent("lethe:refreshed", { bubbles: true }));
          }
          el.setAttribute("data-refreshed-at", String(Date.now()));
          if (el.querySelector("[data-final]")) { window.clearInterval(timer); }
        })
        .catch(function () { /* keep the last good content; try again next tick */ })
        .then(function () { busy = false; });
    }

    if (el.querySelector("[data-final]")) { return; }
    timer = window.setInterval(tick, PERIOD_MS);
  }

  document.querySelectorAll("[data-refresh]").forEach(live);
})();
