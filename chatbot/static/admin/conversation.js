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

  // A photo or voice note Twilio did not give shows a sentence where it would be, not a broken picture;
  // its link opens the panel's reason (gone at Twilio, credentials refused, too slow).
  function unavailable(element) {
    var note = document.createElement("span");
    note.className = "small text-danger media-unavailable";
    note.textContent = "This " + element.dataset.noun + " could not be fetched from Twilio: open it to see why.";
    element.replaceWith(note);
  }

  if (transcript) {
    // Load errors do not bubble: caught on their way down, for the cards drawn later too.
    transcript.addEventListener("error", function (event) {
      if (event.target.dataset && event.target.dataset.noun) {
        unavailable(event.target);
      }
    }, true);
    transcript.querySelectorAll("img.media-thumbnail").forEach(function (image) {
      if (image.complete && image.naturalWidth === 0) {
        unavailable(image);
      }
    });
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
    (message.media || []).forEach(function (file) {
      body.appendChild(attachment(file));
    });
    if (message.place) {
      var map = document.createElement("a");
      map.className = "d-block mt-1 location-link";
      map.href = message.place.map_url;
      map.target = "_blank";
      map.rel = "noopener noreferrer";
      map.textContent = "📍 Shared a location (" + message.place.text + "): open the map";
      body.appendChild(map);
    }
    if (!message.text.trim() && !(message.media || []).length && !message.place) {
      var empty = document.createElement("div");
      empty.className = "small text-muted empty-message";
      empty.textContent = "(no text: WhatsApp sent nothing this panel can show)";
      body.appendChild(empty);
    }
    box.appendChild(body);
    row.appendChild(box);
    return row;
  }

  // A file as the server draws it (conversation_details.html): a thumbnail, a player, or a download link.
  function attachment(file) {
    var box = document.createElement("div");
    box.className = "message-media media-" + file.kind + " mt-1";
    var link = document.createElement("a");
    link.href = file.url;
    link.className = "media-open";
    if (file.kind === "file") {
      link.className += " media-download";
      link.textContent = "📎 Download the " + file.noun;
      box.appendChild(link);
      return box;
    }
    link.target = "_blank";
    link.rel = "noopener";
    var shown = document.createElement(file.kind === "image" ? "img" : file.kind);
    shown.src = file.url;
    shown.dataset.noun = file.noun;
    if (file.kind === "image") {
      shown.className = "media-thumbnail";
      shown.alt = "Photo sent by the customer";
      link.appendChild(shown);
      box.appendChild(link);
      return box;
    }
    shown.className = "media-player";
    shown.controls = true;
    shown.preload = "none";
    link.className += " small d-block";
    link.textContent = "Open the " + file.noun;
    box.appendChild(shown);
    box.appendChild(link);
    return box;
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
