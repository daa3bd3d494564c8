// Shows a conversation's new messages as they arrive, without a reload: every few seconds it asks
// the inbox's JSON endpoint for the messages after the newest one shown and appends them.
// Loaded as a file, never inline: the conversation page's Content-Security-Policy runs only our own scripts.
(function () {
  "use strict";

  var INTERVAL_MS = 3000;
  var transcript = document.getElementById("transcript");
  var chat = document.getElementById("chat");
  // Opened without an anchor (a bookmark, a typed address): start at the newest messages and the
  // reply box, as the panel's own links (#chat) do.
  if (chat && !window.location.hash) {
    chat.scrollIntoView();
  }
  if (!transcript || !transcript.dataset.pollUrl) {
    return;
  }
  var lastId = Number(transcript.dataset.lastId) || 0;

  function urlAfter(id) {
    return transcript.dataset.pollUrl.replace(/\/since\/\d+\.json$/, "/since/" + id + ".json");
  }

  // The same card the server draws for a message, from text only (never HTML: the text is the customer's).
  function card(message) {
    var row = document.createElement("div");
    row.className = "d-flex mb-2" + (message.role === "assistant" ? " justify-content-end" : "");
    row.id = "message-" + message.id;
    var box = document.createElement("div");
    box.className = "card message message-" + message.role + " " +
      (message.role === "assistant" ? "bg-light" : "border-success") + " message-new";
    box.style.maxWidth = "75%";
    var body = document.createElement("div");
    body.className = "card-body py-2 px-3";
    var meta = document.createElement("div");
    meta.className = "small text-muted";
    meta.textContent = (message.role === "assistant" ? "Assistant" : "User") + " · " + message.time + " · new";
    var text = document.createElement("div");
    text.className = "message-content";
    text.style.whiteSpace = "pre-wrap";
    text.style.overflowWrap = "anywhere";
    text.textContent = message.text;
    body.appendChild(meta);
    body.appendChild(text);
    box.appendChild(body);
    row.appendChild(box);
    return row;
  }

  function poll() {
    fetch(urlAfter(lastId), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          throw new Error("signed out");
        }
        return response.ok ? response.json() : { messages: [] };
      })
      .then(function (answer) {
        answer.messages.forEach(function (message) {
          if (message.id > lastId && !document.getElementById("message-" + message.id)) {
            var empty = document.getElementById("no-messages");
            if (empty) {
              empty.remove();
            }
            transcript.appendChild(card(message));
          }
          lastId = Math.max(lastId, message.id);
        });
        transcript.dataset.lastId = String(lastId);
        window.setTimeout(poll, INTERVAL_MS);
      })
      .catch(function (failure) {
        // Signed out: stop asking (a reload leads to the login page). A network blip: try again later.
        if (failure.message !== "signed out") {
          window.setTimeout(poll, INTERVAL_MS * 3);
        }
      });
  }

  window.setTimeout(poll, INTERVAL_MS);
})();
