// Baseline: a minimal Node.js `ws` server fed by Redis pub/sub, what many users would pick instead of wsgw.
// A client's subscribe frame carries an HS256 token, verified with jsonwebtoken (signature and exp, the secret
// from WSGW_HMAC_SECRET): `subscribed` on success, an error frame and close 4001 otherwise. A JOIN frame puts
// the client in the one chat room, and any other client frame is relayed to the room's members (chat).
//
// Two modes:
// - broadcast (default): every message on the Redis channel(s) goes to every connected client, as published;
// - selective: subscribed sessions are indexed by the root paths of their token's `workspaces` claim; a node
//   event ({Type, Target, Source}, PROTOCOL.md §4.1) goes to the sessions of each workspace whose root holds
//   its Target or Source path, the visible nodes' paths rewritten to `<slug>/<rel>`, MetaStore's `pydio:` keys
//   dropped and EventWorkspaceId set, encoded once per workspace (the Go baseline does exactly the same).
//   node server.js --port 8002 --redis-port 6379 --channel C [--channel C2] [--mode selective]
'use strict';
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');
const jwt = require('jsonwebtoken');

const args = { channel: [], mode: 'broadcast' };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '').replace(/-/g, '_');
  if (key === 'channel') args.channel.push(process.argv[i + 1]);
  else args[key] = process.argv[i + 1];
}
const SECRET = process.env.WSGW_HMAC_SECRET;
if (!SECRET) throw new Error('WSGW_HMAC_SECRET is not set');
const SELECTIVE = args.mode === 'selective';

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(args.port), backlog: 4096,
                                  perMessageDeflate: false, clientTracking: true, maxPayload: 16384 });
const TEXT = { binary: false };

// -- the selective index: root path -> Map(view key -> view {uuid, slug, root, prefix, sessions}) --------------
const roots = new Map();

function unindex(ws) {
  for (const view of ws.views) {
    view.sessions.delete(ws);
    if (view.sessions.size === 0) {
      const byKey = roots.get(view.root);
      byKey.delete(view.key);
      if (byKey.size === 0) roots.delete(view.root);
    }
  }
  ws.views = [];
}

function index(ws, workspaces) {
  unindex(ws);
  for (const w of workspaces || []) {
    const many = (w.roots || []).length > 1;
    for (const r of w.roots || []) {
      const key = `${w.uuid}\0${w.slug}\0${r.path}`;
      let byKey = roots.get(r.path);
      if (!byKey) roots.set(r.path, byKey = new Map());
      let view = byKey.get(key);
      if (!view) {
        const name = r.key || r.path.slice(r.path.lastIndexOf('/') + 1);
        view = { key, uuid: w.uuid, eventWorkspaceId: JSON.stringify(w.uuid), root: r.path,
                 prefix: many ? `${w.slug}/${name}` : w.slug, sessions: new Set() };
        byKey.set(key, view);
      }
      view.sessions.add(ws);
      ws.views.push(view);
    }
  }
}

// The views whose root holds `path`: the path itself and each of its ancestors, looked up in the index.
function viewsOf(path, found) {
  if (typeof path !== 'string' || !path) return;
  let end = path.length;
  while (end > 0) {
    const byKey = roots.get(end === path.length ? path : path.slice(0, end));
    if (byKey) for (const view of byKey.values()) found.add(view);
    end = path.lastIndexOf('/', end - 1);
  }
}

function visibleIn(node, view) {
  if (!node || typeof node.Path !== 'string') return false;
  const p = node.Path;
  if (p.slice(p.lastIndexOf('/') + 1).startsWith('.')) return false;
  return p === view.root || (p.startsWith(view.root) && p.charCodeAt(view.root.length) === 47);
}

function shape(node, view) {
  const meta = {};
  if (node.MetaStore) for (const k of Object.keys(node.MetaStore)) if (!k.startsWith('pydio:')) meta[k] = node.MetaStore[k];
  meta.EventWorkspaceId = view.eventWorkspaceId;
  const rel = node.Path.slice(view.root.length);
  return { ...node, Path: view.prefix + rel, MetaStore: meta };
}

function selective(message) {
  let event;
  try { event = JSON.parse(message); } catch (e) { return; }
  if (!event || typeof event !== 'object' || event.Type === 'READ') return;
  const target = event.Target, source = event.Source;
  const views = new Set();
  viewsOf(target && target.Path, views);
  viewsOf(source && source.Path, views);
  for (const view of views) {
    const tv = visibleIn(target, view), sv = visibleIn(source, view);
    if (!tv && !sv) continue;
    let type = event.Type || 'CREATE';
    if (type === 'UPDATE_PATH' && tv !== sv) type = tv ? 'CREATE' : 'DELETE';
    const out = {};
    if (type !== 'CREATE') out.Type = type;
    if (tv) out.Target = shape(target, view);
    if (sv) out.Source = shape(source, view);
    const data = Buffer.from(JSON.stringify(out));
    for (const ws of view.sessions) ws.send(data, TEXT);
  }
}

function broadcast(data) {
  for (const client of wss.clients) client.send(data, TEXT);
}

function subscribe(ws, data) {
  let claims;
  try {
    const frame = JSON.parse(data);
    claims = jwt.verify(String(frame.jwt || ''), SECRET, { algorithms: ['HS256'] });
  } catch (e) {
    ws.send(JSON.stringify({ '@type': 'error', error: `invalid token: ${e.message}` }), TEXT);
    ws.close(4001, 'invalid token');
    return;
  }
  if (SELECTIVE) index(ws, claims.workspaces);
  ws.send(JSON.stringify({ '@type': 'subscribed', user: claims.name, exp: claims.exp }), TEXT);
}

const room = new Set();
wss.on('connection', (ws) => {
  ws.views = [];
  ws.on('message', (data) => {
    const head = data.subarray(0, 24).toString().replace(/ /g, '');
    if (head.startsWith('{"@type":"subscribe"')) subscribe(ws, data);
    else if (head.startsWith('{"@type":"JOIN"')) room.add(ws);
    else for (const member of room) member.send(data, TEXT);
  });
  ws.on('close', () => { room.delete(ws); unindex(ws); });
  ws.on('error', () => {});
});
const sub = new Redis({ host: '127.0.0.1', port: Number(args.redis_port), lazyConnect: false });
sub.subscribe(...args.channel).then(() => console.log('subscribed'));
sub.on('messageBuffer', (channel, message) => (SELECTIVE ? selective(message) : broadcast(message)));
process.on('SIGTERM', () => process.exit(0));
