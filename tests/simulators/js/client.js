// Drive an independent JS ZK client against the simulator and print one JSON object.
// usage: node client.js <node-zklib|zkteco-js> <host> <port> <download|realtime> [events]
// Run with TZ=UTC so the libraries' local-time Dates print the device wall clock.
'use strict';

const fs = require('fs');
// Synchronous write: process.exit() would cut a large piped stdout short.
function emit(obj) {
  const buf = Buffer.from(JSON.stringify(obj) + '\n');
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(1, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
    }
  }
}

const [lib, host, port, mode, wanted] = process.argv.slice(2);
const Client = lib === 'zkteco-js' ? require('zkteco-js') : require('node-zklib');

function wall(d) {
  // Device wall-clock text from a Date built from local fields (TZ=UTC).
  return new Date(d).toISOString().replace('T', ' ').slice(0, 19);
}

function normUsers(users) {
  return users.map((u) => ({ uid: u.uid, name: u.name, userId: String(u.userId), role: u.role }));
}

function normRecords(records) {
  return records.map((r) => ({
    userId: String(r.deviceUserId !== undefined ? r.deviceUserId : r.user_id),
    time: wall(r.recordTime !== undefined ? r.recordTime : r.record_time),
    state: r.state,
    type: r.type,
  }));
}

async function main() {
  const out = { lib };
  const zk = new Client(host, Number(port), 5000, 0);
  await zk.createSocket();
  out.transport = zk.connectionType;
  if (mode === 'download') {
    out.info = await zk.getInfo();
    if (lib === 'zkteco-js') {
      out.serial = await zk.getSerialNumber();
      out.firmware = await zk.getFirmware();
      out.platform = await zk.getPlatform();
      out.deviceName = await zk.getDeviceName();
      out.time = wall(await zk.getTime());
    }
    const users = await zk.getUsers();
    out.users = normUsers(users.data);
    const att = await zk.getAttendances();
    out.records = normRecords(att.data);
    await zk.disconnect();
  } else {
    const n = Number(wanted || 1);
    out.events = [];
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 10000);
      zk.getRealTimeLogs((ev) => {
        out.events.push({ userId: String(ev.userId), time: wall(ev.attTime) });
        if (out.events.length >= n) { clearTimeout(timer); resolve(); }
      });
      setTimeout(() => process.stderr.write('READY\n'), 300);
    });
    try { await zk.disconnect(); } catch (e) { /* some libs reject after realtime */ }
  }
  emit(out);
  process.exit(0);
}

main().catch((err) => {
  // zkteco-js rejects with plain objects wrapping the cause ({err: {err: Error}}): report the innermost.
  let inner = err;
  while (inner && inner.err) inner = inner.err;
  const text = (inner && (inner.message || inner.code)) || String(err);
  emit({ lib, error: text === '[object Object]' ? JSON.stringify(err) : text });
  process.exit(3);
});
