// radproto worklist: polling for new orders, keyboard verdicts, the change type-ahead.
// Plain JavaScript, no libraries (hospitals run offline). Clinical text is only ever set
// with textContent, never as HTML.
(() => {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const query = document.body.dataset.query || "";
  const pollMs = Number(document.body.dataset.pollMs) || 3000;
  const catalog = JSON.parse(document.getElementById("catalog-data").textContent);
  const items = new Map(JSON.parse(document.getElementById("items-data").textContent)
    .map((it) => [it.id, it]));
  const tbody = document.querySelector("#worklist tbody");
  const statusLine = document.getElementById("status");
  const empty = document.getElementById("empty");
  const dialog = document.getElementById("dialog");
  const dialogLabel = document.getElementById("dialog-label");
  const input = document.getElementById("dialog-input");
  const choiceList = document.getElementById("choices");
  let selectedId = null;
  let mode = null; // "change" | "reject" while the dialog is open
  let choices = [];
  let active = 0;

  const rows = () => Array.from(tbody.querySelectorAll("tr.row"));
  const say = (text) => { statusLine.textContent = text; };

  function select(index) {
    const all = rows();
    if (!all.length) { selectedId = null; return; }
    const i = Math.max(0, Math.min(all.length - 1, index));
    all.forEach((tr, n) => {
      tr.classList.toggle("selected", n === i);
      tr.setAttribute("aria-selected", n === i ? "true" : "false");
    });
    selectedId = all[i].dataset.id;
    all[i].scrollIntoView({ block: "nearest" });
  }
  const selectedIndex = () => rows().findIndex((tr) => tr.dataset.id === selectedId);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function textLine(label, value) {
    const div = el("div");
    div.append(el("b", "", label + ": "), document.createTextNode(value));
    return div;
  }

  // A calibrated probability in whole percent, never a flat 100% or 0% (worklist.percent).
  const percent = (p) => (p >= 0.995 ? ">99%" : p < 0.005 ? "<1%" : Math.round(p * 100) + "%");

  function buildRow(it) { // the same cells as templates/worklist.html
    const tr = el("tr", "row" + (it.abstained ? " abstained" : ""));
    tr.dataset.id = it.id;
    tr.tabIndex = -1;
    const prio = el("td", "c-prio");
    prio.append(el("span", "prio prio-" + (it.priority || "none"), it.priority || "-"),
      el("div", "src", it.source));
    const order = el("td", "c-order");
    order.append(el("div", "acc", it.accession || "-"), el("div", "placer", it.placer),
      el("div", "time", it.received));
    const text = el("td", "c-text");
    if (it.history) text.append(textLine("History", it.history));
    if (it.reason) text.append(textLine("Reason", it.reason));
    if (it.diagnoses.length) text.append(textLine("Diagnosis", it.diagnoses.join("; ")));
    if (it.notes.length) text.append(textLine("Notes", it.notes.join(" / ")));
    const sugg = el("td", "c-sugg");
    if (it.abstained) sugg.append(el("div", "abstain-mark", "ABSTAINED: choose a protocol"));
    sugg.append(el("div", "protocol", it.protocol),
      el("div", "prob", "confidence " + percent(it.probability)));
    const top = el("td", "c-top");
    const ol = el("ol");
    it.top3.forEach((t) => {
      const li = el("li", "", t.protocol + " ");
      li.append(el("span", "prob", percent(t.probability)));
      ol.append(li);
    });
    top.append(ol);
    const state = el("td", "c-state");
    state.append(el("span", "state state-" + it.status, it.status));
    if (it.final_protocol) state.append(el("div", "final", it.final_protocol));
    tr.append(prio, order, el("td", "c-exam", it.exam), text, sugg, top, state);
    tr.addEventListener("click", () => select(rows().indexOf(tr)));
    return tr;
  }

  async function poll() {
    const known = Array.from(items.keys()).join(",");
    let data;
    try {
      const response = await fetch("/worklist/items?" + query + "&known=" +
        encodeURIComponent(known), { credentials: "same-origin",
        headers: { Accept: "application/json" } });
      if (response.status === 401) { window.location.assign("/worklist/login"); return; }
      if (!response.ok) { say("Worklist not updated (" + response.status + ")"); return; }
      data = await response.json();
    } catch (err) {
      say("Worklist not updated: the service cannot be reached");
      return;
    }
    data.items.forEach((it) => items.set(it.id, it));
    const existing = new Map(rows().map((tr) => [tr.dataset.id, tr]));
    const keep = new Set(data.ids);
    const before = selectedIndex();
    existing.forEach((tr, id) => { if (!keep.has(id) && !(mode && id === selectedId)) tr.remove(); });
    data.ids.forEach((id) => {
      const tr = existing.get(id) || (items.has(id) ? buildRow(items.get(id)) : null);
      if (tr) tbody.append(tr); // append moves an existing row into queue order
    });
    for (const id of Array.from(items.keys())) if (!keep.has(id)) items.delete(id);
    empty.hidden = rows().length > 0;
    if (selectedId && !keep.has(selectedId) && !mode) select(Math.max(0, before));
    else if (!selectedId || selectedIndex() < 0) select(0);
    else select(selectedIndex());
    if (data.items.length) say(data.items.length + " new order(s)");
  }

  async function verdict(id, outcome, protocol, reason) {
    const response = await fetch("/worklist/verdict", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ suggestion_id: id, outcome, protocol, reason }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { say("Not recorded: " + (body.error || response.status)); return; }
    const tr = tbody.querySelector('tr[data-id="' + CSS.escape(id) + '"]');
    if (tr) {
      const state = tr.querySelector(".c-state");
      state.replaceChildren(el("span", "state state-" + body.outcome, body.outcome));
      if (body.protocol) state.append(el("div", "final", body.protocol));
      tr.classList.add("decided");
    }
    say(body.outcome[0].toUpperCase() + body.outcome.slice(1) +
      (body.protocol ? ": " + body.protocol : ""));
    const index = selectedIndex();
    select(index + 1);
    await poll();
  }

  function matches(text) {
    const terms = text.toLowerCase().split(/\s+/).filter(Boolean);
    if (!terms.length) return catalog.slice(0, 8);
    const hit = catalog.filter((p) => {
      const hay = [p.name, ...p.aliases].join(" | ").toLowerCase();
      return terms.every((t) => hay.includes(t));
    });
    const q = text.toLowerCase().trim();
    hit.sort((a, b) => (b.name.toLowerCase().startsWith(q) - a.name.toLowerCase().startsWith(q))
      || a.name.localeCompare(b.name));
    return hit.slice(0, 8);
  }
  function renderChoices() {
    choiceList.replaceChildren(...choices.map((p, i) => {
      const li = el("li", i === active ? "active" : "", p.name);
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", i === active ? "true" : "false");
      if (p.aliases.length) li.append(el("span", "alias", " " + p.aliases.join(", ")));
      li.addEventListener("mousedown", (e) => { e.preventDefault(); active = i; confirm(); });
      return li;
    }));
  }

  function open(kind) {
    const it = items.get(selectedId);
    if (!it) return;
    mode = kind;
    dialog.hidden = false;
    input.value = "";
    dialogLabel.textContent = kind === "change"
      ? "Change " + (it.accession || it.placer) + " to protocol:"
      : "Reject the suggestion for " + (it.accession || it.placer) + ": reason";
    choices = kind === "change" ? matches("") : [];
    active = 0;
    renderChoices();
    input.focus();
  }
  function close() {
    mode = null;
    dialog.hidden = true;
    choiceList.replaceChildren();
    const tr = rows()[selectedIndex()];
    if (tr) tr.focus();
  }
  function confirm() {
    const id = selectedId;
    if (mode === "change") {
      const pick = choices[active];
      if (!pick) { say("No catalog protocol matches"); return; }
      close();
      verdict(id, "changed", pick.name, "");
    } else if (mode === "reject") {
      const reason = input.value.trim();
      if (!reason) { say("A rejection needs a reason"); return; }
      close();
      verdict(id, "rejected", null, reason);
    }
  }

  input.addEventListener("input", () => {
    if (mode !== "change") return;
    choices = matches(input.value);
    active = 0;
    renderChoices();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.preventDefault(); close(); }
    else if (e.key === "Enter") { e.preventDefault(); confirm(); }
    else if (mode === "change" && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      e.preventDefault();
      const n = choices.length;
      if (n) active = (active + (e.key === "ArrowDown" ? 1 : n - 1)) % n;
      renderChoices();
    }
  });

  document.addEventListener("keydown", (e) => {
    if (mode || e.ctrlKey || e.metaKey || e.altKey) return;
    const tag = (e.target && e.target.tagName) || "";
    if (["INPUT", "SELECT", "TEXTAREA", "BUTTON"].includes(tag)) return;
    const it = items.get(selectedId);
    switch (e.key) {
      case "j": case "ArrowDown": select(selectedIndex() + 1); break;
      case "k": case "ArrowUp": select(selectedIndex() - 1); break;
      case "a":
        if (!it) return;
        if (it.abstained) {
          say("The model abstained: 1-3 takes one of its top 3, c chooses another protocol");
          break;
        }
        verdict(selectedId, "accepted", it.protocol, "");
        break;
      case "1": case "2": case "3": {
        // one of the top 3 (the suggestion itself counts as accepted, server-side)
        const pick = it && it.top3[Number(e.key) - 1];
        if (!pick) return;
        verdict(selectedId, "changed", pick.protocol, "");
        break;
      }
      case "c": open("change"); break;
      case "r": open("reject"); break;
      case "Escape": say(""); break;
      default: return;
    }
    e.preventDefault();
  });

  rows().forEach((tr) => tr.addEventListener("click", () => select(rows().indexOf(tr))));
  select(0);
  setInterval(poll, pollMs);
})();
