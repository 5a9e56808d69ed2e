// "Write a better reply" on /review: the reply the reviewer wanted, saved as a demonstration through the
// REST API (POST /api/demonstrations with the login cookie and its X-CSRF-Token). Loaded as a
// same-origin file beside review.js; it builds its box inside the page's #demo-reply placeholder
// (an empty gr.Markdown: gr.HTML evaluates templates with eval, which the Content-Security-Policy forbids).
//
// Keys: W (outside a text field) opens the box, prefilled with the reply ranked best so far (or empty);
// inside it, Ctrl+Enter saves and Esc closes. The box's "Start from" list switches to another reply,
// the agent's reply (chat-log prompts) or an empty box. What the reply was edited from is recorded.
(function () {
  "use strict";
  const LETTERS = "ABCDEF";
  let context = null; // {item_id, candidates: [{id, text}] in the order shown, reference}

  const $ = (id) => document.getElementById(id);

  function csrf() {
    const m = document.cookie.match(/(?:^|; )rlhf_csrf=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  function itemOnScreen() {
    const field = document.querySelector("#ticket textarea, #ticket input");
    const id = field ? parseInt((field.value || "").split(" ")[0], 10) : NaN;
    return Number.isFinite(id) ? id : null;
  }

  // The reply with the best (lowest) rank given so far on the page, as an index in the order shown.
  function bestRanked() {
    let best = null, bestRank = Infinity;
    for (let i = 0; i < LETTERS.length; i++) {
      const checked = document.querySelector("#rank-" + i + " input[type=radio]:checked");
      const rank = checked ? parseInt(checked.value, 10) : NaN;
      if (rank < bestRank) { best = i; bestRank = rank; }
    }
    return best;
  }

  function build() {
    const root = $("demo-reply");
    if (!root || $("demo-open")) return;
    // A child of the placeholder (an empty gr.Markdown): Gradio's own markup inside it stays untouched.
    const box = document.createElement("div");
    root.appendChild(box);
    box.innerHTML =
      '<button type="button" id="demo-open" class="lg secondary">Write a better reply (W)</button>' +
      '<div id="demo-box" role="group" aria-label="Write a better reply" hidden>' +
      '<label for="demo-start">Start from</label> <select id="demo-start"></select>' +
      '<label for="demo-text">The reply you wanted ' +
      "(Ctrl+Enter saves, Esc closes)</label>" +
      '<textarea id="demo-text" rows="7" maxlength="8000"></textarea>' +
      '<button type="button" id="demo-save" class="lg primary">Save reply</button> ' +
      '<button type="button" id="demo-cancel" class="lg secondary">Close</button></div>' +
      '<p id="demo-status" role="status"></p>';
    $("demo-open").addEventListener("click", open);
    $("demo-save").addEventListener("click", save);
    $("demo-cancel").addEventListener("click", close);
    $("demo-start").addEventListener("change", () => { $("demo-text").value = startText($("demo-start").value); });
    $("demo-text").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); save(); }
      else if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); close(); }
    });
  }

  function startText(choice) {
    if (!context) return "";
    if (choice === "reference") return context.reference || "";
    if (choice.startsWith("c")) return (context.candidates[parseInt(choice.slice(1), 10)] || {}).text || "";
    return "";
  }

  async function open() {
    build();
    const item = itemOnScreen();
    const status = $("demo-status");
    if (item === null) { status.textContent = "No item on screen to write a reply for."; return; }
    try {
      const response = await fetch("/api/demonstrations/context/" + item, { credentials: "same-origin" });
      if (!response.ok) throw new Error((await response.json()).detail || response.status);
      context = await response.json();
    } catch (err) {
      status.textContent = "Could not load the item: " + err.message;
      return;
    }
    const select = $("demo-start");
    select.innerHTML = "";
    const add = (value, label) => { const o = document.createElement("option"); o.value = value; o.textContent = label; select.appendChild(o); };
    context.candidates.forEach((c, i) => add("c" + i, "Reply " + LETTERS[i]));
    if (context.reference) add("reference", "The agent's reply");
    add("empty", "An empty box");
    const best = bestRanked();
    select.value = best !== null && best < context.candidates.length ? "c" + best : "empty";
    $("demo-text").value = startText(select.value);
    $("demo-box").hidden = false;
    status.textContent = "";
    $("demo-text").focus();
  }

  function close() {
    $("demo-box").hidden = true;
    const prompt = $("prompt");
    if (prompt) prompt.focus();
  }

  async function save() {
    const status = $("demo-status");
    const choice = $("demo-start").value;
    const body = { item_id: context.item_id, text: $("demo-text").value, based_on: "" };
    if (choice.startsWith("c")) {
      body.based_on = "candidate";
      body.based_on_candidate_id = context.candidates[parseInt(choice.slice(1), 10)].id;
    } else if (choice === "reference") {
      body.based_on = "reference";
    }
    try {
      const response = await fetch("/api/demonstrations", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      if (!response.ok) {
        const detail = Array.isArray(answer.detail) ? answer.detail.map((d) => d.loc.slice(-1)[0] + ": " + d.msg).join("; ") : answer.detail;
        status.textContent = "Not saved: " + detail;
        $("demo-text").focus();
        return;
      }
      status.textContent = "Saved your reply (demonstration " + answer.id + ", waiting for an admin).";
      $("demo-box").hidden = true;
      const prompt = $("prompt");
      if (prompt) prompt.focus();
    } catch (err) {
      status.textContent = "Not saved: " + err.message;
    }
  }

  document.addEventListener("keydown", (event) => {
    if (!$("demo-reply")) return; // not the reviewer page
    const t = event.target;
    const typing = t && (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
      (t.tagName === "INPUT" && !["radio", "checkbox", "button", "submit"].includes(t.type)));
    if (typing || event.ctrlKey || event.altKey || event.metaKey) return;
    if (event.key === "w" || event.key === "W") { event.preventDefault(); open(); }
  });
  new MutationObserver(build).observe(document.documentElement, { childList: true, subtree: true });
})();
