// The lab console: polls /lab/api/state every second and draws it; every action is a POST
// with the page's X-Lab-Token header (same origin only). Text goes in with textContent only.

const TOKEN = document.querySelector('meta[name="lab-token"]').content;
const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
let last = null;

async function post(path, body) {
  $('error').textContent = '';
  try {
    const answer = await fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Lab-Token': TOKEN },
      body: JSON.stringify(body || {}),
      credentials: 'same-origin',
    });
    const reply = await answer.json();
    if (!answer.ok) $('error').textContent = reply.message || ('HTTP ' + answer.status);
    return reply;
  } catch (err) {
    $('error').textContent = String(err);
    return null;
  } finally {
    poll();
  }
}

function button(label, onClick, opts) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  if (opts && opts.quiet) b.className = 'quiet';
  if (opts && opts.name) b.dataset.action = opts.name;
  b.addEventListener('click', async () => {
    b.disabled = true;
    try { await onClick(); } finally { b.disabled = false; }
  });
  return b;
}

// One row per key, created once (its buttons stay put while the cells update).
function rowFor(tbody, key, build) {
  let row = tbody.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
  if (!row) {
    row = document.createElement('tr');
    row.dataset.key = key;
    build(row);
    tbody.appendChild(row);
  }
  return row;
}

function cells(row, count) {
  while (row.children.length < count) row.appendChild(document.createElement('td'));
  return row.children;
}

function setHealth(td, health) {
  td.textContent = health || '…';
  td.className = health === 'ok' ? 'health-ok' : 'health-bad';
}

function drawApps(state) {
  const tbody = $('apps').tBodies[0];
  for (const app of state.apps) {
    const row = rowFor(tbody, app.name, (r) => {
      const c = cells(r, 9);
      c[8].append(
        button('Kill', () => post('/lab/api/fault', { action: 'kill', app: app.name }), { name: 'kill' }),
        button('Restart', () => post('/lab/api/fault', { action: 'restart', app: app.name }), { quiet: true, name: 'restart' }),
      );
    });
    row.dataset.health = app.health || '';
    const c = row.children;
    c[0].textContent = `${app.name} :${app.port ?? ''}` + (app.restarts ? ` (restarts ${app.restarts})` : '');
    setHealth(c[1], app.health);
    c[2].textContent = app.connections ?? '–';
    c[3].textContent = app.sends_per_s ?? '–';
    c[4].textContent = app.deliveries_per_s ?? '–';
    c[5].textContent = app.fanout_lag ?? '–';
    c[6].textContent = app.publish_failures ?? '–';
    c[7].textContent = app.slow_consumer_disconnects ?? '–';
    c[8].querySelector('[data-action="kill"]').disabled = app.health === 'down';
    c[8].querySelector('[data-action="restart"]').disabled = app.health !== 'down';
  }
  const pointApp = $('point-app');
  if (pointApp.options.length !== state.apps.length) {
    pointApp.replaceChildren(...state.apps.map((a) => new Option(a.name, a.name)));
  }
  const point = $('point');
  if (point.options.length !== state.fault_points.length) {
    point.replaceChildren(...state.fault_points.map((p) => new Option(p, p)));
  }
}

function drawServices(state) {
  const tbody = $('services').tBodies[0];
  for (const svc of state.services) {
    const row = rowFor(tbody, svc.name, (r) => {
      const c = cells(r, 4);
      if (svc.name !== 'toxiproxy') {
        c[3].append(
          button('Stop', () => post('/lab/api/fault', { action: 'stop_service', service: svc.name }), { name: 'stop' }),
          button('Start', () => post('/lab/api/fault', { action: 'start_service', service: svc.name }), { quiet: true, name: 'start' }),
        );
      }
    });
    const c = row.children;
    c[0].textContent = svc.name;
    c[1].textContent = svc.address;
    setHealth(c[2], svc.health);
    for (const b of c[3].querySelectorAll('button')) b.disabled = !svc.can_stop;
  }
  $('flushall').disabled = !state.stack_faults;
  $('stack-hint').textContent = state.stack_faults
    ? 'Stack faults act on the stack this console runs against.'
    : 'Stack faults disabled (--no-stack-faults): the stack is shared.';
}

function drawPaths(state) {
  const tbody = $('paths').tBodies[0];
  if (!state.proxied && !tbody.rows.length) {
    rowFor(tbody, 'none', (r) => { cells(r, 4)[0].textContent = 'Toxiproxy is not running'; });
  }
  for (const path of state.paths) {
    const body = { app: path.app, path: path.kind };
    const row = rowFor(tbody, path.name, (r) => {
      const c = cells(r, 4);
      c[3].append(
        button('Cut', () => post('/lab/api/fault', { action: 'cut', ...body }), { name: 'cut' }),
        button('Slow 500 ms', () => post('/lab/api/fault', { action: 'slow', millis: 500, ...body }), { quiet: true, name: 'slow' }),
        button('Heal', () => post('/lab/api/fault', { action: 'heal', ...body }), { quiet: true, name: 'heal' }),
      );
    });
    const c = row.children;
    c[0].textContent = path.name;
    c[1].textContent = `${path.listen} → ${path.upstream}`;
    c[2].textContent = path.fault;
    c[2].className = path.fault === 'none' ? '' : 'health-bad';
  }
}

function fmt(value, unit) {
  return value === undefined || value === null ? '–' : `${value}${unit || ''}`;
}

function drawFigures(state) {
  const t = state.traffic;
  const lastPoint = state.series.length ? state.series[state.series.length - 1] : {};
  $('f-phase').textContent = t ? t.phase + (t.remaining_s != null ? ` (${Math.round(t.remaining_s)} s left)` : '') : 'idle';
  $('f-phase').dataset.phase = t ? t.phase : 'idle';
  $('f-sends').textContent = fmt(lastPoint.sends);
  $('f-deliveries').textContent = fmt(lastPoint.client_deliveries);
  $('f-p50').textContent = fmt(lastPoint.p50, ' ms');
  $('f-p99').textContent = fmt(lastPoint.p99, ' ms');
  $('f-acked').textContent = t ? `${t.acked} / ${t.submitted}` : '–';
  $('f-inflight').textContent = t ? t.in_flight : '–';
  const errors = t ? Object.entries(t.errors) : [];
  $('f-errors').textContent = errors.length ? errors.map(([k, v]) => `${k} ${v}`).join(', ') : (t ? '0' : '–');
  $('traffic-start').disabled = !!(t && (t.phase === 'running' || t.phase === 'preparing'));
  $('traffic-stop').disabled = !(t && (t.phase === 'running' || t.phase === 'preparing'));
  $('check').disabled = state.checking || !t;
  $('stall').disabled = !(t && t.phase === 'running');
  if (t && t.error) $('error').textContent = 'traffic: ' + t.error;
}

function el(name, attrs) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function drawChart(state) {
  const svg = $('chart');
  const W = 720, H = 220, L = 40, R = 44, T = 10, B = 22;
  const series = state.series;
  const now = state.now;
  const span = Math.min(120, Math.max(30, Math.ceil(now / 10) * 10));
  const t0 = Math.max(0, now - span);
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const nodes = [];
  let labelRow = 0;
  for (const w of state.windows) {
    const end = w.end == null ? now : w.end;
    if (end < t0) continue;
    const x0 = x(Math.max(w.start, t0));
    const width = Math.max(2, x(end) - x0);
    const rect = el('rect', { x: x0, y: T, width, height: H - T - B, fill: 'rgba(198,40,40,0.18)' });
    const title = el('title', {});
    title.textContent = w.label;
    rect.appendChild(title);
    nodes.push(rect);
    const label = el('text', { x: x0 + 2, y: T + 11 + 12 * (labelRow++ % 3), 'font-size': 10, fill: '#c62828' });
    label.textContent = w.label;
    nodes.push(label);
  }
  const visible = series.filter((p) => p.t >= t0);
  const rateMax = Math.max(5, ...visible.map((p) => Math.max(p.sends || 0, p.client_deliveries || 0)));
  const msMax = Math.max(50, ...visible.map((p) => p.p99 || 0));
  const yRate = (v) => H - B - (v / rateMax) * (H - T - B);
  const yMs = (v) => H - B - (v / msMax) * (H - T - B);
  nodes.push(el('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: '#999' }));
  nodes.push(el('line', { x1: L, y1: T, x2: L, y2: H - B, stroke: '#999' }));
  const axis = (text, ax, ay, anchor) => {
    const node = el('text', { x: ax, y: ay, 'font-size': 10, fill: '#5a6270', 'text-anchor': anchor });
    node.textContent = text;
    nodes.push(node);
  };
  axis(`${Math.round(rateMax)}/s`, L - 3, T + 8, 'end');
  axis('0', L - 3, H - B, 'end');
  axis(`${Math.round(msMax)} ms`, W - R + 3, T + 8, 'start');
  axis(`-${span}s`, L, H - 6, 'start');
  axis(now >= span ? 'now' : `+${span}s`, W - R, H - 6, 'end');
  const line = (key, y, color) => {
    const pts = visible.filter((p) => p[key] != null).map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`);
    if (pts.length > 1) nodes.push(el('polyline', { points: pts.join(' '), fill: 'none', stroke: color, 'stroke-width': 1.8 }));
  };
  line('sends', yRate, '#2457c5');
  line('client_deliveries', yRate, '#1a7f37');
  line('p99', yMs, '#c2410c');
  svg.replaceChildren(...nodes);
}

function drawCheck(state) {
  const verdict = $('verdict');
  const list = $('violations');
  if (state.checking) {
    verdict.dataset.state = 'running';
    verdict.textContent = 'Checking: final sync, then the checker…';
    list.replaceChildren();
    return;
  }
  const c = state.check;
  if (!c) {
    verdict.dataset.state = 'none';
    verdict.textContent = '';
    list.replaceChildren();
    return;
  }
  if (c.error) {
    verdict.dataset.state = 'violations';
    verdict.textContent = 'Check failed: ' + c.error;
    return;
  }
  verdict.dataset.state = c.ok ? 'clean' : 'violations';
  verdict.textContent = c.ok
    ? `Clean: no violation. ${c.acked_sends} acked sends, ${c.observations} observations, ${c.clients} clients, ${c.chats} chats (${c.seconds} s).`
    : `${c.violation_count} violation(s); ${c.unanswered_sends} unanswered send(s); ${c.sync_problems.join('; ')}`;
  list.replaceChildren(...c.violations.map((v) => {
    const li = document.createElement('li');
    li.textContent = `[${v.kind}] ${v.message}` + (v.clients.length ? ` (clients: ${v.clients.join(', ')})` : '');
    for (const m of v.involved) {
      const detail = document.createElement('div');
      detail.textContent = `  #${m.sequence} in ${m.chat} from ${m.sender} (${m.client_message_id}): ${m.text}`;
      li.appendChild(detail);
    }
    return li;
  }));
}

function drawEvents(state) {
  const list = $('events');
  if (list.children.length === state.events.length && list.lastChild &&
      list.lastChild.textContent === state.events[state.events.length - 1]) return;
  list.replaceChildren(...state.events.map((line) => {
    const li = document.createElement('li');
    li.textContent = line;
    return li;
  }));
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    const answer = await fetch('/lab/api/state', { credentials: 'same-origin' });
    if (answer.ok) {
      last = await answer.json();
      $('clock').textContent = `+${Math.round(last.now)} s`;
      drawApps(last);
      drawServices(last);
      drawPaths(last);
      drawFigures(last);
      drawChart(last);
      drawCheck(last);
      drawEvents(last);
    }
  } catch (err) {
    $('error').textContent = 'lab unreachable: ' + err;
  } finally {
    polling = false;
  }
}

$('traffic-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const num = (id) => Number($(id).value);
  post('/lab/api/traffic', {
    action: 'start', users: num('t-users'), chats: num('t-chats'), group_size: num('t-group'),
    rate: num('t-rate'), seconds: num('t-seconds'),
  });
});
$('traffic-stop').addEventListener('click', () => post('/lab/api/traffic', { action: 'stop' }));
$('stall').addEventListener('click', () => post('/lab/api/fault', { action: 'stall', seconds: 10 }));
$('check').addEventListener('click', () => post('/lab/api/check', {}));
$('flushall').addEventListener('click', () => post('/lab/api/fault', { action: 'flushall' }));
$('arm').addEventListener('click', () => post('/lab/api/fault', { action: 'arm', app: $('point-app').value, point: $('point').value }));

poll();
setInterval(poll, 1000);
