// The job page's live output: an EventSource on the job's SSE stream (same events as
// GET /v1/jobs/{id}/events, authenticated by the session cookie). "token" events append to
// their round, "status" updates the badge, "done" closes the stream and reloads the detail panel.
(function () {
  "use strict";
  function start() {
    var live = document.getElementById("live");
    if (!live || !window.EventSource) return;
    var rounds = document.getElementById("live-rounds");
    var state = document.getElementById("live-state");
    var source = new EventSource(live.dataset.events);
    // After a reconnect the stream starts again with the round's text so far: replace, not append.
    var opened = false, resync = false;
    source.addEventListener("open", function () {
      if (opened) resync = true;
      opened = true;
    });
    function roundBox(r) {
      var box = rounds.querySelector('pre[data-round="' + r + '"]');
      if (!box) {
        var head = document.createElement("p");
        head.className = "muted";
        head.textContent = "round " + (r + 1);
        box = document.createElement("pre");
        box.className = "answer live-text";
        box.dataset.round = String(r);
        rounds.appendChild(head);
        rounds.appendChild(box);
      }
      return box;
    }
    source.addEventListener("status", function (e) {
      var data = JSON.parse(e.data);
      state.textContent = data.status;
    });
    source.addEventListener("token", function (e) {
      var data = JSON.parse(e.data);
      var box = roundBox(data.round || 0);
      if (resync) {
        box.textContent = data.text;
        resync = false;
      } else {
        box.textContent += data.text;
      }
      rounds.dataset.tokens = String(Number(rounds.dataset.tokens) + 1);
    });
    source.addEventListener("done", function (e) {
      var job = JSON.parse(e.data);
      source.close();
      state.textContent = "ended: " + job.status;
      live.dataset.done = job.status;
      if (window.htmx) {
        htmx.ajax("GET", live.dataset.detail, {target: "#job-detail", swap: "outerHTML"});
      }
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) state.textContent = "stream closed";
    };
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
