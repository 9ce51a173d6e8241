// Live parts: poll a server-rendered fragment and swap it in, without a full reload.
(function () {
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    var url = el.getAttribute("data-refresh");
    setInterval(function () {
      fetch(url, { credentials: "same-origin" }).then(function (r) {
        if (r.ok) { return r.text(); }
        throw new Error("refresh failed");
      }).then(function (html) { el.innerHTML = html; }).catch(function () {});
    }, 2000);
  });
  var reload = document.querySelector("[data-reload]");
  if (reload) { setTimeout(function () { location.reload(); }, 1000 * Number(reload.getAttribute("data-reload"))); }
})();
