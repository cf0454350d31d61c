"use strict";
// The console's only script: new log rows without a reload (server-sent events), countdowns, a confirmation before
// a state-changing button. The pages work without it (reload to see new rows).
(function () {
  var live = document.getElementById("live");
  var body = document.querySelector("#log tbody");
  if (live && body && live.dataset.stream && !live.hidden && window.EventSource) {
    var source = new EventSource(live.dataset.stream);
    source.addEventListener("row", function (event) {
      var data = JSON.parse(event.data);
      if (body.querySelector('tr[data-seq="' + Number(data.seq) + '"]')) return;
      var holder = document.createElement("tbody");
      holder.innerHTML = data.html;  // rendered by the console, every recorded value escaped
      var row = holder.firstElementChild;
      if (!row) return;
      row.classList.add("new");
      body.insertBefore(row, body.firstChild);
      var empty = document.getElementById("empty");
      if (empty) empty.remove();  // "No requests recorded yet." is no longer true
    });
    source.onerror = function () { live.textContent = "Live: reconnecting…"; };
    source.onopen = function () { live.textContent = "Live: new requests appear at the top."; };
  }
  function tick() {
    document.querySelectorAll(".countdown").forEach(function (el) {
      var s = Math.max(0, Math.round(Number(el.dataset.deadline) - Date.now() / 1000));
      el.textContent = s > 0 ? (s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s") : "the wait is over";
    });
  }
  tick();
  setInterval(tick, 1000);
  // The approvals page reloads itself while nobody is typing in it, so new waiting requests appear.
  var main = document.getElementById("main");
  if (main && main.dataset.refresh) {
    var submitted = false;  // a button was pressed: reloading now would drop the person's decision
    document.addEventListener("submit", function (event) { submitted = !event.defaultPrevented; });
    setInterval(function () {
      if (submitted) return;
      var typing = Array.prototype.some.call(document.querySelectorAll("input[name=reason]"), function (i) {
        return i.value !== "";
      });
      var busy = document.activeElement && /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
      if (!typing && !busy && document.visibilityState === "visible") window.location.reload();
    }, 1000 * Number(main.dataset.refresh));
  }
  // "/" jumps to the filters (as in many log viewers); Escape leaves a field.
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    var typing = target && /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName);
    if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
      var first = document.querySelector(".filters input");
      if (first) { event.preventDefault(); first.focus(); }
    } else if (event.key === "Escape" && typing) {
      target.blur();
    }
  });
  document.querySelectorAll("button.danger").forEach(function (button) {
    button.form.addEventListener("submit", function (event) {
      if (!window.confirm(button.textContent + "?")) event.preventDefault();
    });
  });
})();
