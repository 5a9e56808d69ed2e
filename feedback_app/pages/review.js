// Keyboard-first ranking on /review, loaded as a same-origin file (the Content-Security-Policy needs
// no inline script or eval for it). It drives the page's own controls, and submits a complete ranking
// through the REST API (POST /api/rankings with the login cookie and its X-CSRF-Token: one short
// request to the same store call), then presses the page's hidden "next item" button. An incomplete
// ranking, or any refusal, goes through the page's own Submit instead: its validator marks the
// missing ranks and its handler says why (e.g. "already ranked" from another tab).
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
    noticeNewItem(prompt, done);
    ticket();
  }

  // A new item on screen (after load, Submit, Skip or Undo): back to the top, focus on the prompt.
  function noticeNewItem(prompt, done) {
    const text = prompt ? prompt.innerText.trim() : "";
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

  function ticket() {
    const field = document.querySelector("#ticket textarea, #ticket input");
    const parts = field ? field.value.trim().split(" ") : [];
    if (parts.length !== 2) return null;
    if (!(parts[1] in shownAt)) shownAt[parts[1]] = Date.now();
    return { item: parseInt(parts[0], 10), key: parts[1] };
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
    try {
      const response = await fetch("/api/rankings", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify({ item_id: t.item, ranks: ranks, idempotency_key: t.key,
                               seconds: Math.round((Date.now() - shownAt[t.key]) / 10) / 100 }),
      });
      if (response.ok) press("after-submit");
      else submitViaPage();
    } catch (err) {
      submitViaPage();
    } finally {
      sending = false;
    }
  }

  function submitViaPage() {
    viaPage = true;
    try { press("submit"); } finally { viaPage = false; }
  }

  // A click on the Submit button takes the REST path too (capture phase: before the page's handler).
  document.addEventListener("click", (event) => {
    const button = event.target && event.target.closest && event.target.closest("#submit");
    if (!button || viaPage || !document.getElementById("ticket")) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    submitRanking();
  }, true);

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
