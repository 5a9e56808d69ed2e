// Keyboard-first ranking on /review, loaded as a same-origin file (the Content-Security-Policy needs
// no inline script or eval for it). It drives the page's own controls, and submits a complete ranking
// through the REST API (POST /api/rankings with the login cookie, its X-CSRF-Token and fetch_next: one
// short request that stores the ranking and hands out the next item), then draws that next item into
// the page itself: no Gradio queue event per ranking. The page's own rendering ("after-submit") takes
// over when the script cannot draw the item (none left, another K or guideline version). An
// incomplete ranking, or any refusal, goes through the page's own Submit instead: its validator marks
// the missing ranks and its handler says why (e.g. "already ranked" from another tab).
//
// A drawn item lives in nodes of this script's own ("fast" view) laid over Gradio's Markdown, whose
// own nodes are hidden, never edited (Svelte owns them); so Gradio's page state is one item behind.
// Before any other event of the page (skip, undo, flag, refresh, page submit) the script presses the
// hidden "sync-view" button, which renders the item now leased (the one drawn), removes its own
// nodes, puts back the ranks and flag target chosen meanwhile, then lets the event go.
//
// Keys (none while typing in a text field):
//   1..K          rank the reply in focus, then move to the next reply (equal digits make a tie)
//   J / K, arrows move between replies (arrows inside a rank group change that rank, as radios do)
//   Ctrl+Enter or Shift+Enter submit · S skip · U undo · F flag the reply in focus · Esc leave a field
//
// Gradio renders each rank control as a fieldset of radios with distinct names and no accessible
// name; `enhance` gives each group one name (one Tab stop, arrows inside it) and role radiogroup
// with the label Gradio shows ("Rank of reply B"). It runs again after every re-render.
(function () {
  "use strict";
  let current = 0;      // index of the reply in focus
  let lastPrompt = null; // the prompt text last seen, to notice a new item

  const $ = (sel, root) => (root || document).querySelector(sel);
  // Gradio renders a Group as two nested divs carrying the same id and classes: the outer one is the card.
  const CARD = ".reply-card[id^=card-]";
  const cards = () => Array.from(document.querySelectorAll(CARD)).filter((c) => !c.parentElement.closest(CARD));
  const cardIndex = (el) => {
    const card = el && el.closest && el.closest(CARD);
    return card ? parseInt(card.id.slice("card-".length), 10) : -1;
  };
  const rankGroup = (i) => document.getElementById("rank-" + i);

  function enhance() {
    cards().forEach((card, i) => {
      if (!card.hasAttribute("tabindex")) card.setAttribute("tabindex", "-1");
      card.classList.toggle("current", i === current);
      // Long replies show a few lines and "more" (CSS in web.py) until they are in focus.
      const prose = card.querySelector("[id^=reply-] .prose");
      const tall = prose && prose.scrollHeight > 16 * parseFloat(getComputedStyle(prose).fontSize || "16");
      card.classList.toggle("long", !!tall);
      const group = rankGroup(i);
      if (!group) return;
      const label = (group.querySelector("[data-testid=block-info]") || {}).textContent || ("Rank of reply " + i);
      if (group.getAttribute("role") !== "radiogroup") group.setAttribute("role", "radiogroup");
      if (group.getAttribute("aria-label") !== label.trim()) group.setAttribute("aria-label", label.trim());
      group.querySelectorAll("input[type=radio]").forEach((input) => {
        if (input.name !== "rank-" + i) input.name = "rank-" + i;
      });
    });
    const message = document.getElementById("message");
    if (message && message.getAttribute("role") !== "status") message.setAttribute("role", "status");
    const prompt = document.getElementById("prompt");
    if (prompt && !prompt.hasAttribute("tabindex")) prompt.setAttribute("tabindex", "-1");
    const done = document.getElementById("all-done");
    if (done && !done.hasAttribute("tabindex")) done.setAttribute("tabindex", "-1");
    noticePageRender();
    noticeNewItem(prompt, done);
    ticket();
  }

  // A new item on screen (after load, Submit, Skip or Undo): back to the top, focus on the prompt.
  function noticeNewItem(prompt, done) {
    // The prompt's Markdown only: opening a drawn item's earlier turns (inside #prompt) is no new item.
    const body = prompt && prompt.querySelector(".prose");
    const text = body ? body.innerText.trim() : "";
    const doneShown = done && done.offsetParent !== null && done.innerText.trim() !== "";
    const key = doneShown ? "\u0000done" : text;
    if (!key || key === lastPrompt) return;
    lastPrompt = key;
    current = 0;
    cards().forEach((card, i) => card.classList.toggle("current", i === 0));
    window.scrollTo(0, 0);
    (doneShown ? done : prompt).focus({ preventScroll: true });
  }

  function focusCard(i) {
    const all = cards().filter((c) => c.offsetParent !== null);
    if (!all.length) return;
    current = Math.max(0, Math.min(all.length - 1, i));
    all.forEach((card, j) => card.classList.toggle("current", j === current));
    all[current].focus();
    all[current].scrollIntoView({ block: "nearest" });
  }

  function rankCurrent(rank) {
    const group = rankGroup(current);
    const input = group && group.querySelector("input[type=radio][value='" + rank + "']");
    if (!input || input.disabled) return false;
    input.click();
    const shown = cards().filter((c) => c.offsetParent !== null).length;
    if (current + 1 < shown) focusCard(current + 1);
    else { const submit = document.getElementById("submit"); if (submit) submit.focus(); }
    return true;
  }

  // The REST submit path. The ticket (#ticket, a hidden field the page fills) names the item on screen and the
  // ranking's idempotency key; a retry with the key stores the ranking once.
  const shownAt = {};    // when each ticket was first seen, for the ranking's seconds
  let sending = false;
  let viaPage = false;   // a click on Submit that should reach the page's own handler

  function ticketField() { return document.querySelector("#ticket textarea, #ticket input"); }

  function ticket() {
    const field = ticketField();
    const parts = field ? field.value.trim().split(" ") : [];
    if (parts.length < 2) return null;
    if (!(parts[1] in shownAt)) shownAt[parts[1]] = Date.now();
    return { item: parseInt(parts[0], 10), key: parts[1], guideline: parts[2] || "" };
  }

  function csrf() {
    const m = document.cookie.match(/(?:^|; )rlhf_csrf=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  function shownRanks() {
    const shown = cards().filter((c) => c.offsetParent !== null).length;
    return Array.from({ length: shown }, (_, i) => {
      const checked = rankGroup(i) && rankGroup(i).querySelector("input[type=radio]:checked");
      return checked ? parseInt(checked.value, 10) : null;
    });
  }

  async function submitRanking() {
    const t = ticket();
    const ranks = shownRanks();
    const complete = t && ranks.length && ranks.every((r) => r !== null) && ranks.includes(1);
    if (!complete) return submitViaPage();
    if (sending) return;
    sending = true;
    let answer = null;
    try {
      const response = await fetch("/api/rankings", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify({ item_id: t.item, ranks: ranks, idempotency_key: t.key, fetch_next: true,
                               seconds: Math.round((Date.now() - shownAt[t.key]) / 10) / 100 }),
      });
      answer = response.ok ? await response.json() : null;
    } catch (err) {
      answer = null;
    } finally {
      sending = false;
    }
    if (!answer) submitViaPage();
    else if (canDraw(answer.next_item, t)) draw(answer.next_item);
    else press("after-submit"); // renders from the page's own handler, whose state it sets afresh
  }

  function submitViaPage() {
    syncThen(() => {
      viaPage = true;
      try { press("submit"); } finally { viaPage = false; }
    });
  }

  // A click on the Submit button takes the REST path too (capture phase: before the page's handler).
  // A click on another button of the page's own waits until the page has caught up with a drawn item.
  document.addEventListener("click", (event) => {
    const target = event.target && event.target.closest ? event.target : null;
    if (!target || !document.getElementById("ticket")) return;
    if (target.closest("#submit") && !viaPage) {
      event.preventDefault();
      event.stopImmediatePropagation();
      submitRanking();
      return;
    }
    const button = target.closest("#skip button, button#skip, #undo button, button#undo, #refresh button, " +
                                  "button#refresh, #flag button, button#flag");
    if (!button || !fast) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    syncThen(() => button.click());
  }, true);

  // ---- The next item, drawn from the REST answer ----------------------------------------------------

  let fast = null;      // {item, ticket}: an item this script drew; the page's own state is one behind
  let syncing = null;   // events waiting for the page to catch up

  const visibleCards = () => cards().filter((c) => c.offsetParent !== null).length;

  function canDraw(next, shownTicket) {
    if (!next || !Array.isArray(next.candidates)) return false;
    const n = next.candidates.length;
    // Another K needs the page's cards and rank choices rebuilt, another guideline its new text.
    if (n !== visibleCards() || !document.getElementById("prompt")) return false;
    if (String(next.guideline_version || "").split(/\s+/).join("") !== shownTicket.guideline) return false;
    for (let i = 0; i < n; i++) if (!document.getElementById("reply-" + i) || !rankGroup(i)) return false;
    return true;
  }

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function draw(next) {
    const t = ticket();
    const progress = document.getElementById("progress");
    const counts = progress && progress.innerText.match(/(\d+) of (\d+) today · (\d+) ranked in all · (\d+) skipped/);
    clearFast();
    const turns = Array.isArray(next.prompt) ? next.prompt : null;
    const older = turns && turns.length > RECENT_TURNS ? turns.slice(0, turns.length - RECENT_TURNS) : [];
    const recent = turns ? turns.slice(older.length) : next.prompt;
    const prompt = document.getElementById("prompt");
    const box = layOver(prompt, turns ? turnsMarkdown(recent) : String(next.prompt));
    const earlierBox = document.getElementById("earlier-box");
    if (earlierBox) { earlierBox.dataset.fastHidden = "1"; earlierBox.style.display = "none"; }
    if (older.length) {
      const details = document.createElement("details");
      details.className = "fast-view fast-earlier";
      const summary = document.createElement("summary");
      summary.textContent = "Show " + older.length + " earlier turn" + (older.length === 1 ? "" : "s");
      const body = document.createElement("div");
      body.className = "md";
      body.appendChild(renderMarkdown(turnsMarkdown(older)));
      details.append(summary, body);
      prompt.insertBefore(details, box);
    }
    next.candidates.forEach((c, i) => layOver(document.getElementById("reply-" + i), replyMarkdown(c)));
    for (let i = 0; i < next.candidates.length; i++) {
      rankGroup(i).querySelectorAll("input[type=radio]").forEach((input) => {
        input.checked = false;
        input.setAttribute("aria-checked", "false");
      });
    }
    layOver(document.getElementById("message"), "Saved.");
    if (counts) {
      const [today, total, ranked, skipped] = counts.slice(1).map((x) => parseInt(x, 10));
      layOver(progress, "**" + (today + 1) + " of " + Math.max(total, today + 1) + " today** · " + (ranked + 1) +
              " ranked in all · " + skipped + " skipped");
    }
    const key = newKey();
    shownAt[key] = Date.now();
    const field = ticketField();
    field.value = next.item_id + " " + key + (t && t.guideline ? " " + t.guideline : "");
    fast = { item: next.item_id, ticket: field.value };
    lastPrompt = null;
    noticeNewItem(prompt, null);
  }

  // One Markdown block shown in place of a Gradio Markdown's own (hidden, left untouched).
  function layOver(block, markdown) {
    if (!block) return null;
    const own = block.querySelector(":scope > [data-testid=markdown-wrapper]");
    const div = document.createElement("div");
    div.className = "prose md fast-view";
    div.appendChild(renderMarkdown(markdown));
    block.insertBefore(div, own || null);
    if (own) { own.dataset.fastHidden = "1"; own.style.display = "none"; }
    return div;
  }

  function clearFast() {
    document.querySelectorAll(".fast-view").forEach((el) => el.remove());
    document.querySelectorAll("[data-fast-hidden]").forEach((el) => {
      el.style.display = "";
      delete el.dataset.fastHidden;
    });
  }

  // The page rendered (its ticket is no longer the one this script wrote): its own view is back.
  function noticePageRender() {
    const field = ticketField();
    if (fast && field && field.value !== fast.ticket) {
      fast = null;
      clearFast();
    }
  }

  // Run `action` (an event of the page's own) once the page shows the drawn item itself.
  function syncThen(action) {
    if (!fast) { action(); return; }
    if (syncing) { syncing.push(action); return; }
    syncing = [action];
    const item = fast.item;
    const ranks = shownRanks();
    const target = document.querySelector("#flag-target input[type=radio]:checked");
    const flagTarget = target ? target.value : null;
    const started = Date.now();
    press("sync-view");
    const wait = () => {
      noticePageRender();
      if (fast && Date.now() - started < 60000) { setTimeout(wait, 25); return; }
      if (fast) { fast = null; clearFast(); } // the page never answered: show its own view as it is
      const t = ticket();
      if (t && t.item === item) {
        ranks.forEach((rank, i) => {
          const input = rank !== null && rankGroup(i) && rankGroup(i).querySelector("input[type=radio][value='" + rank + "']");
          if (input && !input.checked) input.click();
        });
        const again = flagTarget && document.querySelector("#flag-target input[type=radio][value='" + flagTarget + "']");
        if (again && !again.checked) again.click();
      }
      const todo = syncing;
      syncing = null;
      todo.forEach((f) => f());
    };
    setTimeout(wait, 25);
  }

  // ---- Markdown, built as DOM nodes (text is never parsed as HTML) ------------------------------------
  // The subset replies and prompts use: paragraphs, headings, lists, fenced code, code spans, bold,
  // italics and http(s) links; the rest shows as the text it is (as the page's inert_markdown intends).

  const RECENT_TURNS = 2; // reviewer.RECENT_TURNS: a conversation's last turns in view

  function turnsMarkdown(turns) {
    return turns.map((m) => {
      const role = String((m && m.role) || "");
      return "**" + role.charAt(0).toUpperCase() + role.slice(1) + ":** " + String((m && m.content) || "");
    }).join("\n\n");
  }

  function replyMarkdown(c) {
    const cut = c.finish_reason === "length"
      ? "\n\n*\u2026 cut at " + (c.new_tokens === null || c.new_tokens === undefined ? "?" : c.new_tokens) +
        " tokens (the generator's limit)*" : "";
    return String(c.text) + cut;
  }

  const FENCE = /^\s*(```|~~~)/, HEADING = /^(#{1,6})\s+(.*)$/, BULLET = /^\s*[-*+]\s+/, NUMBER = /^\s*\d+[.)]\s+/;

  function renderMarkdown(markdown) {
    const out = document.createDocumentFragment();
    const lines = String(markdown).replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) { i++; continue; }
      const fence = line.match(FENCE);
      if (fence) {
        const body = [];
        for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
        i++;
        const pre = document.createElement("pre"), code = document.createElement("code");
        code.textContent = body.join("\n");
        pre.appendChild(code);
        out.appendChild(pre);
        continue;
      }
      const heading = line.match(HEADING);
      if (heading) {
        const h = document.createElement("h" + heading[1].length);
        inline(h, heading[2]);
        out.appendChild(h);
        i++;
        continue;
      }
      if (BULLET.test(line) || NUMBER.test(line)) {
        const marker = BULLET.test(line) ? BULLET : NUMBER;
        const list = document.createElement(marker === BULLET ? "ul" : "ol");
        for (; i < lines.length && marker.test(lines[i]); i++) {
          const li = document.createElement("li");
          inline(li, lines[i].replace(marker, ""));
          list.appendChild(li);
        }
        out.appendChild(list);
        continue;
      }
      const para = [];
      for (; i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) &&
             !BULLET.test(lines[i]) && !NUMBER.test(lines[i]); i++) para.push(lines[i]);
      const p = document.createElement("p");
      inline(p, para.join("\n"));
      out.appendChild(p);
    }
    return out;
  }

  function inline(parent, text) {
    const re = /`([^`]+)`|\*\*([^*]+)\*\*|(?<!\w)__([^_]+)__(?!\w)|\*([^*\s][^*]*)\*|(?<!\w)_([^_\s][^_]*)_(?!\w)|\[([^\]]+)\]\(([^)\s]+)\)/g;
    let last = 0, m;
    while ((m = re.exec(text))) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      let node;
      if (m[1] !== undefined) { node = document.createElement("code"); node.textContent = m[1]; }
      else if (m[2] !== undefined || m[3] !== undefined) { node = document.createElement("strong"); inline(node, m[2] ?? m[3]); }
      else if (m[4] !== undefined || m[5] !== undefined) { node = document.createElement("em"); inline(node, m[4] ?? m[5]); }
      else if (/^https?:\/\//i.test(m[7])) {
        node = document.createElement("a");
        node.href = m[7];
        node.rel = "noopener noreferrer nofollow";
        node.target = "_blank";
        node.textContent = m[6];
      } else node = document.createTextNode(m[0]);
      parent.appendChild(node);
      last = re.lastIndex;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function press(id) {
    const el = document.getElementById(id);
    const button = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    if (button && !button.disabled) button.click();
  }

  function flagCurrent() {
    const box = document.getElementById("flag-box");
    if (!box) return;
    const toggle = box.querySelector("button");
    if (!document.getElementById("flag-kind") && toggle) toggle.click(); // the accordion is closed
    setTimeout(() => {
      const target = document.querySelector("#flag-target input[type=radio][value='reply " + "ABCDEF"[current] + "']");
      if (target) target.click();
      const kind = document.querySelector("#flag-kind input[type=radio]");
      if (kind) kind.focus();
    }, 50);
  }

  function typing(el) {
    if (!el) return false;
    if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
    return el.tagName === "INPUT" && !["radio", "checkbox", "button", "submit"].includes(el.type);
  }

  // A click in a reply makes it the reply in focus (and shows all of a long one).
  document.addEventListener("click", (event) => {
    const at = cardIndex(event.target);
    if (at < 0) return;
    current = at;
    cards().forEach((c, j) => c.classList.toggle("current", j === current));
  });

  document.addEventListener("keydown", (event) => {
    if (!document.getElementById("key-legend")) return; // not the reviewer page
    const target = event.target;
    if (event.key === "Escape" && typing(target)) { target.blur(); focusCard(current); return; }
    if (typing(target) || event.altKey || event.metaKey) return;
    const onRadio = target && target.tagName === "INPUT" && target.type === "radio";
    if (event.key === "Enter" && (event.ctrlKey || event.shiftKey)) {
      event.preventDefault();
      submitRanking();
      return;
    }
    if (event.ctrlKey) return;
    // The reply in focus is the card holding the focus, if any.
    const at = cardIndex(target);
    if (at >= 0) current = at;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (/^[1-9]$/.test(key)) {
      if (rankCurrent(key)) event.preventDefault();
    } else if (key === "j" || (!onRadio && key === "ArrowDown")) {
      event.preventDefault(); focusCard(current + 1);
    } else if (key === "k" || (!onRadio && key === "ArrowUp")) {
      event.preventDefault(); focusCard(current - 1);
    } else if (key === "s") {
      event.preventDefault(); press("skip");
    } else if (key === "u") {
      event.preventDefault(); press("undo");
    } else if (key === "f") {
      event.preventDefault(); flagCurrent();
    }
  });

  // Gradio's radio renames its input ("radio-<n+1>") each time its checked state changes, which
  // would split the group again: put the group's name back at once, before the next key arrives.
  function renameNow(records) {
    records.forEach((r) => {
      const input = r.target;
      if (r.type !== "attributes" || input.type !== "radio") return;
      const group = input.closest("[id^=rank-]");
      if (group && /^rank-\d+$/.test(group.id) && input.name !== group.id) input.name = group.id;
    });
  }

  let scheduled = false;
  new MutationObserver((records) => {
    renameNow(records);
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; enhance(); });
  }).observe(document.documentElement, { childList: true, subtree: true, characterData: true,
                                         attributes: true, attributeFilter: ["name"] });
})();
