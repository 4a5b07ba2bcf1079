// Baseline: a minimal Node.js `ws` broadcast server, what many users would pick instead of wsgw.
// Every message on the Redis channel(s) goes to every connected client; a client's subscribe frame is
// answered `subscribed` (no token check); a JOIN frame puts it in the one chat room, and any other client
// frame is relayed to the room's members (chat).
//   node server.js --port 8002 --redis-port 6379 --channel C [--channel C2]
'use strict';
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');

const args = { channel: [] };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '').replace(/-/g, '_');
  if (key === 'channel') args.channel.push(process.argv[i + 1]);
  else args[key] = process.argv[i + 1];
}
const SUBSCRIBED = Buffer.from('{"@type":"subscribed","user":"bench"}');

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(args.port), backlog: 4096,
                                  perMessageDeflate: false, clientTracking: true });
const TEXT = { binary: false };
function broadcast(data) {
  for (const client of wss.clients) client.send(data, TEXT);
}
const room = new Set();
wss.on('connection', (ws) => {
  ws.on('message', (data) => {
    const head = data.subarray(0, 24).toString().replace(/ /g, '');
    if (head.startsWith('{"@type":"subscribe"')) ws.send(SUBSCRIBED, TEXT);
    else if (head.startsWith('{"@type":"JOIN"')) room.add(ws);
    else for (const member of room) member.send(data, TEXT);
  });
  ws.on('close', () => room.delete(ws));
  ws.on('error', () => {});
});
const sub = new Redis({ host: '127.0.0.1', port: Number(args.redis_port), lazyConnect: false });
sub.subscribe(...args.channel).then(() => console.log('subscribed'));
sub.on('messageBuffer', (channel, message) => broadcast(message));
process.on('SIGTERM', () => process.exit(0));
