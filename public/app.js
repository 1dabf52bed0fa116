// moongate demo page: everything goes through this page's own origin.
// REST with `Authorization: Bearer <token>`; WebSockets with ?token=
// (browsers cannot set headers on a WebSocket).
//
// URL options: ?token=...&tenant=...&duration=<s>&auto=1 (auto: create a
// session, connect the agent, run one intent to its end; #state says "done").
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const wsBase = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host;

const ui = {
  token: $('token'), tenant: $('tenant'), duration: $('duration'), intentText: $('intent-text'),
  btnSession: $('btn-session'), btnIntent: $('btn-intent'), btnChat: $('btn-chat'), btnSend: $('btn-send'),
  chatInput: $('chat-input'),
};

if (params.get('token')) ui.token.value = params.get('token');
if (params.get('tenant')) ui.tenant.value = params.get('tenant');
if (params.get('duration')) ui.duration.value = params.get('duration');

const state = { session: null, execution: null, stream: null, chat: null, heartbeats: 0, chatHeartbeats: 0,
                statuses: [], done: false, chatReplies: 0 };

function setState(s) { $('state').textContent = s; document.body.dataset.state = s; }

function time(ts) {
  const d = ts ? new Date(ts * 1000) : new Date();
  return d.toLocaleTimeString([], { hour12: false });
}

function badge(id, text, cls) {
  const b = $(id);
  b.textContent = text;
  b.className = 'badge' + (cls ? ' ' + cls : '');
}

function timeline(cls, text) {
  const li = document.createElement('li');
  li.className = cls;
  const t = document.createElement('span');
  t.className = 't';
  t.textContent = time();
  li.appendChild(t);
  li.appendChild(document.createTextNode(text));
  $('timeline').appendChild(li);
  li.scrollIntoView({ block: 'nearest' });
  return li;
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: 'Bearer ' + ui.token.value.trim() } };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) {
    const msg = (data && (data.message || data.error)) || r.statusText;
    throw new Error(r.status + ' ' + msg);
  }
  return data;
}

async function whoami() {
  try {
    const me = await api('GET', '/api/auth/whoami');
    $('who').textContent = 'signed in as ' + me.subject + (me.tenant_id ? ' (tenant ' + me.tenant_id + ')' : ' (any tenant)');
    if (me.tenant_id && !params.get('tenant')) ui.tenant.value = me.tenant_id;
    return me;
  } catch (e) {
    $('who').textContent = 'token refused: ' + e.message;
    throw e;
  }
}

async function createSession() {
  const s = await api('POST', '/api/session', { tenant_id: ui.tenant.value.trim() });
  state.session = s.session_id;
  $('session-id').textContent = s.session_id;
  ui.btnIntent.disabled = false;
  return s;
}

// ---- execution stream ----

function showStatus(msg) {
  const d = msg.data || {};
  state.statuses.push(msg.status);
  $('current-status').textContent = msg.status + (d.step ? ' · ' + d.step : '');
  $('bar').style.width = (typeof d.progress === 'number' ? d.progress : 0) + '%';
  const li = timeline('status st-' + msg.status, msg.status +
    (typeof d.progress === 'number' ? ' ' + d.progress + '%' : '') + (d.step ? ' (' + d.step + ')' : ''));
  li.dataset.status = msg.status;
  if (msg.status === 'completed' && d.artifacts && d.artifacts.length) showArtifact(d.artifacts[0]);
}

async function showArtifact(a) {
  try {
    const full = await api('GET', '/api/execution/' + encodeURIComponent(state.execution) + '/artifacts/' +
      encodeURIComponent(a.artifact_id) + '?tenant_id=' + encodeURIComponent(ui.tenant.value.trim()));
    $('artifact-name').textContent = full.name;
    $('artifact-content').textContent = full.content;
    $('artifact').classList.remove('hidden');
  } catch (e) {
    timeline('msg-error', 'artifact: ' + e.message);
  }
}

function openStream(executionId) {
  return new Promise((resolve) => {
    const tenant = ui.tenant.value.trim();
    const url = wsBase + '/api/execution/' + encodeURIComponent(executionId) + '/stream?tenant_id=' +
      encodeURIComponent(tenant) + '&token=' + encodeURIComponent(ui.token.value.trim());
    const ws = new WebSocket(url);
    state.stream = ws;
    badge('stream-state', 'connecting');
    ws.onopen = () => badge('stream-state', 'open', 'open');
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.type === 'ping') {
        state.heartbeats++;
        $('heartbeats').textContent = state.heartbeats;
        $('last-ping').textContent = time(msg.ts);
        timeline('msg-ping heartbeat', 'heartbeat ping ts=' + msg.ts);
        ws.send(JSON.stringify({ type: 'pong' })); // optional: the server ignores it
      } else if (msg.type === 'status') {
        showStatus(msg);
      } else if (msg.type === 'error') {
        timeline('msg-error', 'error: ' + (msg.message || msg.error) + (msg.status ? ' (' + msg.status + ')' : ''));
      }
    };
    ws.onerror = () => badge('stream-state', 'error', 'error');
    ws.onclose = (ev) => {
      badge('stream-state', 'closed ' + ev.code);
      timeline('msg-close', 'stream closed: ' + ev.code + (ev.reason ? ' ' + ev.reason : ''));
      state.stream = null;
      resolve(ev.code);
    };
  });
}

async function submitIntent() {
  ui.btnIntent.disabled = true;
  try {
    $('timeline').textContent = '';
    $('artifact').classList.add('hidden');
    state.statuses = [];
    const r = await api('POST', '/api/intent', {
      session_id: state.session, tenant_id: ui.tenant.value.trim(), intent: ui.intentText.value,
      params: { duration: Number(ui.duration.value) || 10 },
    });
    state.execution = r.execution_id;
    $('execution-id').textContent = r.execution_id;
    return await openStream(r.execution_id);
  } catch (e) {
    timeline('msg-error', 'intent: ' + e.message);
    throw e;
  } finally {
    ui.btnIntent.disabled = false;
  }
}

// ---- guide agent chat ----

function bubble(cls, text) {
  const div = document.createElement('div');
  div.className = 'bubble ' + cls;
  div.textContent = text;
  $('messages').appendChild(div);
  div.scrollIntoView({ block: 'nearest' });
}

function connectChat() {
  if (state.chat) { state.chat.close(1000); return; }
  const q = new URLSearchParams({ tenant_id: ui.tenant.value.trim(), token: ui.token.value.trim() });
  if (state.session) q.set('session_id', state.session);
  const ws = new WebSocket(wsBase + '/api/runtime/agent?' + q.toString());
  state.chat = ws;
  badge('chat-state', 'connecting');
  ws.onopen = () => {
    badge('chat-state', 'open', 'open');
    ui.chatInput.disabled = ui.btnSend.disabled = false;
    ui.btnChat.textContent = 'Disconnect';
  };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { bubble('agent', ev.data); return; }
    if (msg.type === 'ping') {
      state.chatHeartbeats++;
      $('chat-heartbeats').textContent = state.chatHeartbeats;
    } else if (msg.type === 'hello' || msg.type === 'message') {
      $('messages').querySelectorAll('.typing').forEach((n) => n.remove());
      bubble('agent', msg.text);
      if (msg.type === 'message') state.chatReplies++;
    } else if (msg.type === 'typing') {
      bubble('info typing', 'agent is typing…');
    }
  };
  ws.onclose = (ev) => {
    badge('chat-state', 'closed ' + ev.code);
    ui.chatInput.disabled = ui.btnSend.disabled = true;
    ui.btnChat.textContent = 'Connect';
    state.chat = null;
  };
}

function sendChat(text) {
  if (!state.chat || state.chat.readyState !== WebSocket.OPEN || !text) return;
  bubble('user', text);
  state.chat.send(JSON.stringify({ type: 'message', text, id: 'c' + Date.now() }));
}

// ---- wiring ----

ui.btnSession.onclick = () => createSession().catch((e) => timeline('msg-error', 'session: ' + e.message));
ui.btnIntent.onclick = () => submitIntent().catch(() => {});
ui.btnChat.onclick = connectChat;
$('chat-form').onsubmit = (ev) => {
  ev.preventDefault();
  sendChat(ui.chatInput.value.trim());
  ui.chatInput.value = '';
};

function waitFor(fn, ms) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const iv = setInterval(() => {
      if (fn()) { clearInterval(iv); resolve(); } else if (Date.now() - t0 > ms) { clearInterval(iv); reject(new Error('timeout')); }
    }, 50);
  });
}

async function auto() {
  setState('running');
  try {
    await whoami();
    await createSession();
    connectChat();
    await waitFor(() => state.chat && state.chat.readyState === WebSocket.OPEN, 5000);
    sendChat('help');
    const code = await submitIntent();
    await waitFor(() => state.chatReplies > 0, 5000);
    setState(code === 1000 && state.statuses.includes('completed') ? 'done' : 'failed: close ' + code);
  } catch (e) {
    setState('failed: ' + e.message);
  }
}

if (params.get('auto') === '1') {
  auto();
} else {
  whoami().catch(() => {});
}
