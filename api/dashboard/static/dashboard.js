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
    // After a reconnect the stream starts each round again from its text so far: the first text
    // of a (task, round) on the new connection replaces what the box holds instead of adding to it.
    var opened = false, fresh = {};
    source.addEventListener("open", function () {
      if (opened) fresh = {reconnected: true};
      opened = true;
    });
    function roundBox(task, r) {
      var key = (task || "") + "/" + r;
      var box = rounds.querySelector('pre[data-key="' + CSS.escape(key) + '"]');
      if (!box) {
        var head = document.createElement("p");
        head.className = "muted";
        head.textContent = (task ? "task " + task + " · " : "") + "round " + (r + 1);
        box = document.createElement("pre");
        box.className = "answer live-text";
        box.dataset.key = key;
        box.dataset.round = String(r);
        if (task) box.dataset.task = task;
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
      var box = roundBox(data.task, data.round || 0);
      if (fresh.reconnected && !fresh[box.dataset.key]) {
        fresh[box.dataset.key] = true;
        box.textContent = data.text;
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
