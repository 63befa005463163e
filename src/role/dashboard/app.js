// The mu-server's dashboard: the controller's REST API seen from a browser. The token is
// kept in this tab's session storage and sent only with requests to relative URLs, that is
// to the origin that served this page.
'use strict';
(function () {
  const KEY = 'mtt-controller-token';
  const POLL_MS = 2000;
  const HISTORY_MS = 10000;
  const $ = (s) => document.querySelector(s);
  let token = sessionStorage.getItem(KEY) || '';
  let previous = null; // { at, bytes: Map(path -> [up, down]) }
  let rates = new Map();
  let users = [];
  let picked = null;
  let chart = null;
  let timers = [];
  let editing = null;

  async function api(method, path, body) {
    if (!path.startsWith('/') || path.startsWith('//')) throw new Error('not this origin: ' + path);
    const init = {
      method,
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let data = null;
    try { data = await r.json(); } catch (_) { /* no body */ }
    if (r.status === 401) {
      logout('The controller refused this token.');
      throw new Error('unauthorized');
    }
    if (!r.ok) throw new Error((data && data.error) || 'HTTP ' + r.status);
    return data;
  }

  // Sizes: 1.5G, 200M, 64K (powers of 1024), or bytes.
  function parseBytes(text) {
    const t = text.trim();
    if (t === '') return null;
    const m = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$/i.exec(t);
    if (!m) throw new Error('"' + t + '" is not a size: write e.g. 500M, 10G or a number of bytes');
    const pow = ' kmgtp'.indexOf(m[2].toLowerCase() || ' ');
    return Math.round(parseFloat(m[1]) * Math.pow(1024, pow));
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toString() : v.toFixed(v < 10 ? 2 : 1)) + ' ' + units[i];
  }

  function cell(tr, label, text, cls) {
    const td = document.createElement('td');
    td.dataset.label = label;
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function button(text, name, handler) {
    const b = document.createElement('button');
    b.textContent = text;
    b.name = name;
    b.addEventListener('click', handler);
    return b;
  }

  function quotaText(u) {
    const parts = [];
    if (u.quota != null) parts.push(fmtBytes(u.used_up + u.used_down) + ' of ' + fmtBytes(u.quota));
    if (u.quota_up != null) parts.push('↑ ' + fmtBytes(u.used_up) + ' of ' + fmtBytes(u.quota_up));
    if (u.quota_down != null) parts.push('↓ ' + fmtBytes(u.used_down) + ' of ' + fmtBytes(u.quota_down));
    if (parts.length && u.resets_at) parts.push('resets ' + new Date(u.resets_at * 1000).toLocaleString());
    return parts.join(', ') || '—';
  }

  function limitsText(u) {
    const parts = [];
    if (u.max_connections != null) parts.push(u.open_connections + ' of ' + u.max_connections + ' connections');
    if (u.rate != null) parts.push(fmtBytes(u.rate) + '/s');
    return parts.join(', ') || '—';
  }

  function render() {
    const body = $('#users tbody');
    body.replaceChildren();
    for (const u of users) {
      const tr = document.createElement('tr');
      tr.dataset.path = u.path;
      if (u.path === picked) tr.className = 'picked';
      const p = cell(tr, 'Path', u.path, 'path');
      p.title = 'Show this user in the chart';
      p.addEventListener('click', () => { picked = picked === u.path ? null : u.path; render(); history(); });
      const st = cell(tr, 'State', '');
      const badge = document.createElement('span');
      badge.className = 'state ' + u.state;
      badge.textContent = u.state.replace('_', ' ');
      st.appendChild(badge);
      cell(tr, 'Destination', u.dst);
      cell(tr, 'Tunnels', String(u.connections), 'num tunnels');
      const r = rates.get(u.path) || [0, 0];
      cell(tr, 'Now', fmtBytes(Math.round(r[0])) + '/s ↑ ' + fmtBytes(Math.round(r[1])) + '/s ↓', 'num now');
      cell(tr, 'Total', fmtBytes(u.bytes_up) + ' ↑ ' + fmtBytes(u.bytes_down) + ' ↓', 'num total');
      cell(tr, 'Quota used', quotaText(u), 'quota');
      cell(tr, 'Expires', u.expires ? new Date(u.expires * 1000).toLocaleString() : '—', 'expires');
      cell(tr, 'Limits', limitsText(u), 'limits');
      const actions = cell(tr, 'Actions', '', 'actions');
      actions.removeAttribute('data-label');
      actions.append(
        button('Edit', 'edit', () => openEditor(u)),
        button('Remove', 'remove', () => remove(u.path, false)),
        button('Kick', 'kick', () => remove(u.path, true)),
      );
      body.appendChild(tr);
    }
  }

  async function poll() {
    try {
      const [list, status] = await Promise.all([api('GET', '/v1/users'), api('GET', '/v1/status')]);
      const at = performance.now();
      const bytes = new Map(list.map((u) => [u.path, [u.bytes_up, u.bytes_down]]));
      if (previous) {
        const dt = (at - previous.at) / 1000;
        rates = new Map();
        for (const [path, [up, down]] of bytes) {
          const was = previous.bytes.get(path);
          if (was && dt > 0) rates.set(path, [Math.max(0, up - was[0]) / dt, Math.max(0, down - was[1]) / dt]);
        }
      }
      previous = { at, bytes };
      users = list;
      let s = 'v' + status.version + ' · users: ' + status.users + ' · tunnels: ' + status.connections;
      if (status.store) s += ' · Redis ' + status.store.state;
      $('#status').textContent = s;
      $('#error').textContent = '';
      render();
    } catch (e) {
      if (e.message !== 'unauthorized') $('#error').textContent = 'Cannot reach the controller: ' + e.message;
    }
  }

  // The chart's section sets its width (the chart itself would hold it at its old size).
  function chartWidth() {
    return Math.max(240, $('#chart').parentElement.clientWidth);
  }

  function series(points, step) {
    return [points.map((p) => p[0]), points.map((p) => p[1] / step), points.map((p) => p[2] / step)];
  }

  async function history() {
    let h;
    try { h = await api('GET', '/v1/history'); } catch (_) { return; }
    const total = series(h.total.points, h.total.step);
    const opts = {
      width: chartWidth(),
      height: 240,
      // Always the last hour, however little of it the server has seen.
      scales: { x: { time: true, range: () => { const now = Date.now() / 1000; return [now - 3600, now]; } } },
      axes: [{}, { values: (u, vals) => vals.map((v) => fmtBytes(Math.round(v)) + '/s'), size: 96 }],
      series: [{}, { label: 'all ↑', stroke: '#2f6fdd' }, { label: 'all ↓', stroke: '#1a7f37' }],
    };
    let data = total;
    const mine = picked && h.users.points[picked];
    if (mine && total[0].length) {
      data = uPlot.join([total, series(mine, h.users.step)]);
      opts.series.push({ label: picked + ' ↑', stroke: '#b35900', spanGaps: true },
        { label: picked + ' ↓', stroke: '#c62828', spanGaps: true });
    }
    $('#chart-who').textContent = picked ? '(all users, and ' + picked + ')' : '(all users)';
    if (chart) chart.destroy();
    chart = new uPlot(opts, data, $('#chart'));
  }

  // A datetime-local input's value for a Unix time, and back.
  function localTime(t) {
    if (!t) return '';
    const d = new Date(t * 1000);
    return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }

  function unixTime(value) {
    return value ? Math.floor(new Date(value).getTime() / 1000) : null;
  }

  function openEditor(u) {
    editing = u ? u.path : null;
    const f = $('#edit-form');
    f.reset();
    $('#edit-title').textContent = u ? 'Edit ' + u.path : 'Add user';
    $('#edit-error').textContent = '';
    f.path.readOnly = !!u;
    if (u) {
      f.path.value = u.path;
      f.dst.value = u.dst;
      for (const k of ['quota', 'quota_up', 'quota_down', 'rate']) f[k].value = u[k] != null ? String(u[k]) : '';
      f.period.value = typeof u.reset === 'string' ? u.reset : '';
      f.max_connections.value = u.max_connections != null ? String(u.max_connections) : '';
      f.expires.value = localTime(u.expires);
      f.reset_at.value = localTime(u.reset_at);
    }
    $('#edit').showModal();
  }

  async function save(ev) {
    ev.preventDefault();
    const f = $('#edit-form');
    try {
      const path = f.path.value.trim();
      if (!path.startsWith('/')) throw new Error('a path starts with /');
      const body = { dst: f.dst.value.trim() };
      for (const k of ['quota', 'quota_up', 'quota_down', 'rate']) body[k] = parseBytes(f[k].value);
      body.reset = f.period.value || null;
      body.max_connections = f.max_connections.value ? parseInt(f.max_connections.value, 10) : null;
      body.expires = unixTime(f.expires.value);
      body.reset_at = unixTime(f.reset_at.value);
      // An edit keeps a reset period that the form cannot show (a number of seconds).
      const before = users.find((u) => u.path === editing);
      if (before && typeof before.reset === 'number' && !f.period.value) body.reset = before.reset;
      await api('PUT', '/v1/users' + path, body);
      $('#edit').close();
      await poll();
    } catch (e) {
      if (e.message !== 'unauthorized') $('#edit-error').textContent = e.message;
    }
  }

  async function remove(path, kick) {
    const what = kick ? 'Remove ' + path + ' and close its tunnels now?' : 'Remove ' + path + '? Its open tunnels run on.';
    if (!window.confirm(what)) return;
    try {
      await api('DELETE', '/v1/users' + path + (kick ? '?kick=true' : ''));
      await poll();
    } catch (e) {
      if (e.message !== 'unauthorized') $('#error').textContent = e.message;
    }
  }

  function start() {
    $('#login').hidden = true;
    $('#app').hidden = false;
    $('#logout').hidden = false;
    poll();
    history();
    timers = [setInterval(poll, POLL_MS), setInterval(history, HISTORY_MS)];
  }

  function logout(why) {
    token = '';
    sessionStorage.removeItem(KEY);
    timers.forEach(clearInterval);
    timers = [];
    previous = null;
    $('#app').hidden = true;
    $('#logout').hidden = true;
    $('#login').hidden = false;
    $('#login-error').textContent = why || '';
  }

  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    token = $('#token').value.trim();
    try {
      await api('GET', '/v1/status');
      sessionStorage.setItem(KEY, token);
      $('#token').value = '';
      $('#login-error').textContent = '';
      start();
    } catch (e) {
      if (e.message !== 'unauthorized') $('#login-error').textContent = e.message;
    }
  });
  $('#logout').addEventListener('click', () => logout(''));
  $('#add').addEventListener('click', () => openEditor(null));
  $('#edit-form').addEventListener('submit', save);
  $('#cancel').addEventListener('click', () => $('#edit').close());
  window.addEventListener('resize', () => { if (chart) chart.setSize({ width: chartWidth(), height: 240 }); });

  if (token) start(); else logout('');
})();
