// Sokana Analytics: the one script of every page, embedded in the binary and served from it.
// Pages are HTML from the server and charts are SVG from the server; this script only fetches
// panels as they come, keeps the filters in the URL, shows tooltips and rows, and redraws
// panels whose tables changed. No framework, no build step.
"use strict";
(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const csrf = () => (document.cookie.match(/(?:^|; )sokana_csrf=([^;]*)/) || [])[1] || "";

  // A request to this server; a stale access token is refreshed once (its cookie goes only to
  // the refresh route), and a reader whose session ended is sent to sign in again.
  async function api(url, options = {}, retried = false) {
    const headers = Object.assign({}, options.headers || {});
    const init = { method: options.method || "GET", credentials: "same-origin", headers };
    if (init.method !== "GET") headers["X-CSRF-Token"] = csrf();
    if (options.json !== undefined) {
      init.body = JSON.stringify(options.json);
      headers["Content-Type"] = "application/json";
    }
    const response = await fetch(url, init);
    if (response.status === 401 && !retried && !url.startsWith("/embed/") && !url.startsWith("/api/v1/auth/")) {
      if (await refresh()) return api(url, options, true);
      location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    }
    return response;
  }

  async function refresh() {
    try {
      const response = await fetch("/api/v1/auth/refresh", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: "{}",
      });
      return response.ok;
    } catch {
      return false;
    }
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      return body.error || { message: response.statusText };
    } catch {
      return { message: response.statusText || "HTTP " + response.status };
    }
  }

  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value !== undefined && value !== null) node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  // A table of rows (objects) under `columns`, numbers to the right and nulls marked.
  function table(columns, rows) {
    const head = element("tr", {}, ...columns.map((c) => element("th", { scope: "col" }, c)));
    const body = rows.map((row) =>
      element(
        "tr",
        {},
        ...columns.map((c) => {
          const value = row[c];
          if (value === null || value === undefined) return element("td", { class: "null" }, "null");
          if (typeof value === "number") return element("td", { class: "num" }, String(value));
          return element("td", {}, typeof value === "object" ? JSON.stringify(value) : String(value));
        }),
      ),
    );
    return element("div", { class: "scroll" }, element("table", { class: "data" }, element("thead", {}, head), element("tbody", {}, ...body)));
  }

  const signOut = $("#sign-out");
  if (signOut) {
    signOut.addEventListener("click", async () => {
      await api("/api/v1/auth/logout", { method: "POST" });
      location.assign("/login");
    });
  }

  // Sign-in: password, then a code for accounts with a second factor, or its enrolment.
  const login = $("#login");
  if (login) {
    const next = () => {
      const target = new URLSearchParams(location.search).get("next") || "";
      return /^\/(?![/\\])/.test(target) ? target : "/dashboards";
    };
    const show = (node, message) => {
      node.textContent = message;
      node.hidden = !message;
    };
    // A reader whose access token expired but whose session lives goes straight back.
    if (csrf()) refresh().then((ok) => ok && location.replace(next()));
    login.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { username: $("#username").value, password: $("#password").value };
      const code = $("#totp").value.trim();
      if (code) body.totp = code;
      show($("#login-error"), "");
      const response = await api("/api/v1/auth/login", { method: "POST", json: body });
      if (response.ok) {
        const tokens = await response.json();
        if (tokens.mfa_enrollment_required) return enrol();
        return location.assign(next());
      }
      const error = await errorOf(response);
      if (error.code === "mfa_required") {
        $("#code-field").hidden = false;
        $("#totp").focus();
        show($("#login-error"), "Enter the code from your authenticator app.");
      } else {
        show($("#login-error"), error.message);
      }
    });
    const enrol = async () => {
      const response = await api("/api/v1/auth/mfa/setup", { method: "POST", json: {} });
      if (!response.ok) return show($("#login-error"), (await errorOf(response)).message);
      const setup = await response.json();
      login.hidden = true;
      $("#enrol").hidden = false;
      $("#enrol-secret").textContent = setup.secret;
      $("#enrol-link").href = setup.otpauth_url;
      $("#enrol-code").focus();
    };
    $("#enrol").addEventListener("submit", async (event) => {
      event.preventDefault();
      const response = await api("/api/v1/auth/mfa/confirm", { method: "POST", json: { code: $("#enrol-code").value.trim() } });
      if (!response.ok) return show($("#enrol-error"), (await errorOf(response)).message);
      const confirmed = await response.json();
      $("#enrol").hidden = true;
      $("#recovery").hidden = false;
      $("#recovery-codes").textContent = (confirmed.recovery_codes || []).join("\n");
      $("#recovery-done").href = next();
    });
  }

  const root = $("#dashboard");
  if (root) dashboard(root);

  function dashboard(root) {
    const base = root.dataset.base;
    const embedded = root.dataset.embed === "true";
    const form = $("#filters", root);
    const dark = matchMedia("(prefers-color-scheme: dark)");
    const panels = $$(".panel", root);
    const tooltip = $("#tooltip", root);
    const live = $("#live", root);
    // The table versions each panel was drawn from.
    const drawnFrom = new Map();
    let query = root.dataset.query || "";

    const clamp = (n) => Math.max(80, Math.min(4000, Math.round(n)));
    const url = (section, suffix, extra = {}) => {
      const params = new URLSearchParams(query);
      for (const [key, value] of Object.entries(extra)) if (value !== undefined) params.set(key, value);
      return `${base}/panels/${encodeURIComponent(section.dataset.panel)}${suffix}?${params}`;
    };
    const announce = (message) => {
      live.textContent = message;
    };

    async function load(section) {
      const chart = $(".chart", section);
      const sequence = (section.sequence = (section.sequence || 0) + 1);
      const size = { width: clamp(section.clientWidth), height: clamp(section.clientHeight) };
      section.drawnWidth = size.width;
      chart.setAttribute("aria-busy", "true");
      try {
        const response = await api(url(section, ".svg", { ...size, theme: dark.matches ? "dark" : "light" }));
        if (sequence !== section.sequence) return;
        if (!response.ok) return failed(chart, await errorOf(response));
        const svg = await response.text();
        if (sequence !== section.sequence) return;
        // The chart module writes this SVG and escapes every text and attribute in it.
        chart.innerHTML = svg;
        prepare(chart);
        const tables = new Map();
        for (const entry of (response.headers.get("x-sokana-tables") || "").split(",").filter(Boolean)) {
          const at = entry.lastIndexOf("@");
          tables.set(entry.slice(0, at), Number(entry.slice(at + 1)));
        }
        drawnFrom.set(section, tables);
      } catch (error) {
        if (sequence === section.sequence) failed(chart, { message: "The panel could not be loaded: " + error.message });
      } finally {
        if (sequence === section.sequence) chart.removeAttribute("aria-busy");
      }
    }

    function failed(chart, error) {
      chart.replaceChildren(
        element("div", { class: "error", role: "alert" }, element("strong", {}, "This panel could not be drawn"), error.message || ""),
      );
    }

    // Tooltips come from each mark's <title>, shown at once on hover and on keyboard focus.
    function prepare(chart) {
      for (const hit of $$(".hit", chart)) {
        const title = $("title", hit);
        if (!title) continue;
        hit.dataset.tip = title.textContent;
        hit.setAttribute("aria-label", title.textContent);
        hit.setAttribute("role", "button");
        title.remove();
      }
    }

    function showTip(hit, x, y) {
      tooltip.textContent = hit.dataset.tip || "";
      tooltip.hidden = !tooltip.textContent;
      const box = hit.getBoundingClientRect();
      const left = x ?? box.left + box.width / 2;
      const top = y ?? box.top;
      tooltip.style.left = Math.min(left + 12, innerWidth - tooltip.offsetWidth - 8) + "px";
      tooltip.style.top = Math.max(top - tooltip.offsetHeight - 10, 8) + "px";
    }
    root.addEventListener("pointermove", (event) => {
      const hit = event.target.closest && event.target.closest(".hit");
      if (hit) showTip(hit, event.clientX, event.clientY);
      else tooltip.hidden = true;
    });
    root.addEventListener("focusin", (event) => {
      if (event.target.classList && event.target.classList.contains("hit")) showTip(event.target);
    });
    root.addEventListener("focusout", () => (tooltip.hidden = true));
    root.addEventListener("pointerleave", () => (tooltip.hidden = true));

    // Drill-down: a mark whose field a select filter covers filters the dashboard by it;
    // otherwise it opens the rows behind it.
    function drill(section, hit) {
      const marks = [
        [section.dataset.x, hit.dataset.x],
        [section.dataset.series, hit.dataset.series],
      ];
      if (form) {
        for (const [field, value] of marks) {
          if (!field || value === undefined) continue;
          const filter = $$(".filter.select", form).find((f) => f.dataset.dimension === field);
          const box = filter && $$("input[type=checkbox]", filter).find((b) => b.value === value);
          if (!box) continue;
          for (const other of $$("input[type=checkbox]", filter)) other.checked = other === box;
          apply();
          announce(`Filtered by ${$("legend", filter).textContent}: ${value}`);
          return;
        }
      }
      if (section.dataset.rows === "true") rows(section, { x: hit.dataset.x, series: hit.dataset.series });
    }
    root.addEventListener("click", (event) => {
      const hit = event.target.closest && event.target.closest(".hit");
      if (hit) drill(hit.closest(".panel"), hit);
      const button = event.target.closest && event.target.closest("[data-show-rows]");
      if (button) {
        button.closest("details").open = false;
        rows(button.closest(".panel"), {});
      }
    });
    root.addEventListener("keydown", (event) => {
      if ((event.key === "Enter" || event.key === " ") && event.target.classList && event.target.classList.contains("hit")) {
        event.preventDefault();
        drill(event.target.closest(".panel"), event.target);
      }
    });

    const dialog = $("#rows", root);
    $("#rows-close", root).addEventListener("click", () => dialog.close());
    async function rows(section, mark) {
      const body = $("#rows-body", root);
      const what = [section.getAttribute("aria-label"), mark.x, mark.series].filter(Boolean).join(" · ");
      $("#rows-title", root).textContent = "Rows behind: " + what;
      body.replaceChildren("Loading…");
      if (!dialog.open) dialog.showModal();
      const response = await api(url(section, "/rows", { x: mark.x, series: mark.series }));
      if (!response.ok) return body.replaceChildren(element("p", { class: "notice", role: "alert" }, (await errorOf(response)).message));
      const data = await response.json();
      const note = data.truncated ? `The first ${data.rows.length} rows, newest first.` : `${data.rows.length} rows.`;
      body.replaceChildren(element("p", { class: "meta" }, note), table(data.columns.map((c) => c.name), data.rows));
    }

    function exports(section) {
      for (const link of $$("a[data-export]", section)) {
        const kind = link.dataset.export;
        link.href = url(section, "." + kind);
        link.setAttribute("download", `${root.dataset.id}-${section.dataset.panel}.${kind}`);
      }
    }

    // The filters' state is the URL: a change rewrites it and redraws every panel.
    function selectedQuery() {
      const params = new URLSearchParams();
      for (const filter of $$(".filter", form)) {
        const name = filter.dataset.filter;
        if (filter.classList.contains("range")) {
          const choice = $("select", filter).value;
          const custom = $(".custom", filter);
          custom.hidden = choice !== "custom";
          if (choice !== "custom") params.append(name, choice);
          else {
            const from = $("[data-from]", filter).value;
            const to = $("[data-to]", filter).value;
            if (!from || !to) return null;
            const end = new Date(to + "T00:00:00Z");
            end.setUTCDate(end.getUTCDate() + 1);
            params.append(name, `${from}..${end.toISOString().slice(0, 10)}`);
          }
        } else {
          const chosen = $$("input:checked", filter).map((b) => b.value);
          for (const value of chosen) params.append(name, value);
          $(".chosen", filter).textContent = chosen.length ? chosen.join(", ") : "All";
        }
      }
      return params.toString();
    }

    function apply() {
      const next = selectedQuery();
      if (next === null || next === query) return;
      query = next;
      history.pushState(null, "", "?" + query);
      panels.forEach(exports);
      panels.forEach(load);
    }

    if (form) {
      let pending;
      form.addEventListener("change", () => {
        clearTimeout(pending);
        pending = setTimeout(apply, 250);
      });
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        apply();
      });
      addEventListener("popstate", () => location.reload());
    }

    panels.forEach(exports);
    panels.forEach(load);
    dark.addEventListener("change", () => panels.forEach(load));

    // A panel drawn for another width is drawn again once resizing settles.
    let resizing;
    new ResizeObserver(() => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        for (const section of panels) {
          if (section.drawnWidth && Math.abs(section.clientWidth - section.drawnWidth) > 24) load(section);
        }
      }, 300);
    }).observe(root);

    // Live refresh: redraw exactly the panels that read a table that has a newer version.
    const source = new EventSource(embedded ? `${base}/events` : "/api/v1/events/tables");
    source.addEventListener("versions", (event) => {
      const versions = JSON.parse(event.data);
      const stale = panels.filter((section) => {
        const tables = drawnFrom.get(section);
        return tables && Object.entries(versions).some(([table, version]) => tables.has(table) && tables.get(table) < version);
      });
      for (const section of stale) {
        load(section).then(() => {
          section.classList.remove("updated");
          void section.offsetWidth;
          section.classList.add("updated");
        });
      }
      if (stale.length) announce(`Updated ${stale.length} panel${stale.length > 1 ? "s" : ""} with new data at ${new Date().toLocaleTimeString()}`);
    });
  }

  // The SQL console: run, show, download, draw.
  const console_ = $("#console");
  if (console_) sqlConsole(console_);

  function sqlConsole(form) {
    const sql = $("#sql");
    const error = $("#sql-error");
    const meta = $("#sql-meta");
    const result = $("#sql-result");
    const chartForm = $("#chart-form");
    const fail = (message) => {
      error.textContent = message;
      error.hidden = false;
    };
    async function run() {
      error.hidden = true;
      meta.textContent = "Running…";
      const started = performance.now();
      const response = await api("/api/v1/query", { method: "POST", json: { sql: sql.value, limit: 1000 } });
      if (!response.ok) {
        meta.textContent = "";
        const e = await errorOf(response);
        return fail(e.position ? `${e.message} (line ${e.position.line}, column ${e.position.column})` : e.message);
      }
      const body = await response.json();
      const rows = body.rows || [];
      const columns = (body.columns || []).map((c) => c.name || c);
      const names = columns.length ? columns : Object.keys(rows[0] || {});
      const took = Math.round(performance.now() - started);
      meta.textContent = `${rows.length} rows in ${took} ms${response.headers.get("x-cache") === "hit" ? " (cached)" : ""}.`;
      result.replaceChildren(table(names, rows));
      for (const id of ["#chart-x", "#chart-y", "#chart-series"]) {
        const select = $(id);
        select.replaceChildren(...(id === "#chart-series" ? [element("option", { value: "" }, "none")] : []), ...names.map((n) => element("option", { value: n }, n)));
      }
      if (names.length > 1) $("#chart-y").value = names[1];
      chartForm.hidden = names.length === 0;
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      run();
    });
    sql.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        run();
      }
    });
    for (const button of $$("[data-download]", form)) {
      button.addEventListener("click", async () => {
        const format = button.dataset.download;
        const response = await api("/api/v1/query", { method: "POST", json: { sql: sql.value, format } });
        if (!response.ok) return fail((await errorOf(response)).message);
        const link = element("a", { href: URL.createObjectURL(await response.blob()), download: `query.${format}` });
        document.body.append(link);
        link.click();
        link.remove();
      });
    }
    chartForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const series = $("#chart-series").value;
      const encoding = { x: $("#chart-x").value, y: [$("#chart-y").value] };
      if (series) encoding.series = series;
      const chart = $("#sql-chart");
      const response = await api("/api/v1/chart", {
        method: "POST",
        json: { sql: sql.value, chart: $("#chart-kind").value, encoding, theme: matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light", width: clamp(chart.clientWidth || 900), height: 360 },
      });
      if (!response.ok) return fail((await errorOf(response)).message);
      chart.innerHTML = await response.text();
    });
    const clamp = (n) => Math.max(80, Math.min(4000, Math.round(n)));
  }
})();
