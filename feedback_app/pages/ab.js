// Keys of the blind A/B page (/ab), loaded as a same-origin file (no inline script, no eval):
//   1 or Left arrow: left is better · 2 or Right arrow: right is better · T: tie · B: both bad
//   U: undo your last verdict (its pair comes back)
// Each presses the page's own button. When the next pair arrives, focus goes to its prompt,
// so a second Enter on the button just pressed cannot judge the new pair unseen.
(function () {
  "use strict";
  const KEYS = { "1": "left", arrowleft: "left", "2": "right", arrowright: "right", t: "tie", b: "both_bad" };
  let lastPair = null;

  function typing(el) {
    if (!el) return false;
    if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
    return el.tagName === "INPUT" && !["radio", "checkbox", "button", "submit"].includes(el.type);
  }

  document.addEventListener("keydown", (event) => {
    if (!document.getElementById("ab-keys")) return;
    if (typing(event.target) || event.ctrlKey || event.altKey || event.metaKey) return;
    const key = event.key.toLowerCase();
    const verdict = KEYS[key];
    const button = key === "u" ? document.getElementById("ab-undo")
      : verdict && document.getElementById("ab-verdict-" + verdict);
    if (button && !button.disabled) { event.preventDefault(); button.click(); }
  });

  function noticeNewPair() {
    const prompt = document.getElementById("ab-prompt");
    const left = document.getElementById("ab-left");
    if (!prompt || !left) return;
    if (!prompt.hasAttribute("tabindex")) prompt.setAttribute("tabindex", "-1");
    const key = prompt.innerText.trim() + "\u0000" + left.innerText.trim();
    if (key === lastPair || !prompt.innerText.trim()) return;
    lastPair = key;
    window.scrollTo(0, 0);
    prompt.focus({ preventScroll: true });
  }

  let scheduled = false;
  new MutationObserver(() => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; noticeNewPair(); });
  }).observe(document.documentElement, { childList: true, subtree: true, characterData: true });
})();
