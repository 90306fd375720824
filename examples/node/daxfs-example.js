#!/usr/bin/env node
// A daxfs client in Node.js, written from proto/daxfs.proto alone (README.md
// here is the guide). It says Hello, keeps its session renewed on the Session
// stream, writes a file through a WRITE layout by storing into the region,
// reads it back through a READ layout, and answers a recall.
//
//   node daxfs-example.js ADDR [--region PATH] [--read PATH] [--linger SECONDS]
//
// ADDR is unix:/path or host:port; the token, if the server wants one, comes
// from $DAXFS_TOKEN_FILE (a file holding this client's token).
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'daxfs.proto');

// Ids are opaque uint64 values above 2^53: `longs: String` keeps them exact
// (a JavaScript number would round them, and the server would not know them).
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const daxfs = grpc.loadPackageDefinition(definition).daxfs.v1;

function parseArgs(argv) {
  const args = { addr: null, region: null, read: null, linger: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--region') args.region = argv[++i];
    else if (a === '--read') args.read = argv[++i];
    else if (a === '--linger') args.linger = Number(argv[++i]);
    else if (!args.addr) args.addr = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (!args.addr) throw new Error('usage: daxfs-example.js ADDR [--region PATH] [--read PATH] [--linger S]');
  return args;
}

// One metadata object for every call: the token (if any) as a Bearer credential.
function credentials() {
  const md = new grpc.Metadata();
  const file = process.env.DAXFS_TOKEN_FILE;
  if (file) md.add('authorization', `Bearer ${fs.readFileSync(file, 'utf8').trim()}`);
  return md;
}

// Errors: the gRPC status plus the POSIX errno in trailing metadata "daxfs-errno".
function errnoOf(err) {
  const v = err.metadata && err.metadata.get('daxfs-errno');
  return v && v.length ? Number(v[0]) : null;
}

class DaxfsClient {
  constructor(addr) {
    this.stub = new daxfs.Daxfs(addr, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
    });
    this.md = credentials();
    this.caller = null; // {uid, gid, groups, client_id}
    this.deadline = 0n; // lease deadline on OUR monotonic clock (ns)
    this.renewals = 0;
    this.recalls = [];
    this.layouts = new Map(); // ino -> tiles; dropped on a recall
  }

  call(method, request) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.md, { deadline: Date.now() + 30000 }, (err, reply) => {
        if (err) {
          err.message = `${method}: ${err.message} (errno ${errnoOf(err)})`;
          reject(err);
        } else resolve(reply);
      });
    });
  }

  async hello(name) {
    const reply = await this.call('Hello', { client_name: name });
    if (reply.protocol !== '2') throw new Error(`server speaks protocol ${reply.protocol}, not 2`);
    this.hello_ = reply;
    this.caller = {
      uid: process.getuid(),
      gid: process.getgid(),
      groups: [],
      client_id: reply.client_id, // a decimal string: never Number() it
    };
    this.leaseNs = BigInt(reply.lease_ns);
    return reply;
  }

  // The Session stream: Renew every third of the lease; the lease lasts
  // lease_ns from when we SENT the Renew that a Renewed with the same seq
  // answers, on our own clock. Recalls arrive here; we answer RecallDone.
  openSession() {
    this.stream = this.stub.Session(this.md);
    this.seq = 0;
    this.sent = new Map(); // seq -> our monotonic send time
    this.stream.on('data', (event) => this.onEvent(event));
    this.stream.on('error', (err) => {
      if (err.code !== grpc.status.CANCELLED) console.error(`session stream: ${err.message}`);
    });
    this.renew();
    const every = Number(this.leaseNs / 3n / 1000000n);
    this.timer = setInterval(() => this.renew(), Math.max(every, 50));
  }

  renew() {
    const seq = ++this.seq;
    this.sent.set(String(seq), process.hrtime.bigint());
    this.stream.write({ caller: this.caller, renew: { seq: String(seq) } });
  }

  onEvent(event) {
    if (event.kind === 'renewed') {
      const sentAt = this.sent.get(event.renewed.seq);
      this.sent.delete(event.renewed.seq);
      if (sentAt !== undefined) {
        const until = sentAt + BigInt(event.renewed.lease_ns);
        if (until > this.deadline) this.deadline = until;
        this.renewals++;
      }
    } else if (event.kind === 'recall') {
      const r = event.recall;
      // Drop what we cached of the file, finish copies in flight (ours are
      // synchronous, so none is), then say so. Until we do, the server keeps
      // the blocks out of reuse.
      this.layouts.delete(r.ino);
      this.recalls.push(r);
      this.stream.write({ caller: this.caller, recall_done: { recall_id: r.recall_id } });
      console.log(`recall ${r.recall_id} of ino ${r.ino} [${r.offset}, +${r.length}) (${r.reason}): answered`);
    }
  }

  // Self-fencing: never touch the region once our lease may have lapsed.
  checkLease() {
    if (process.hrtime.bigint() >= this.deadline) throw new Error('lease lapsed: layouts are fenced');
  }

  async waitForLease() {
    while (this.deadline === 0n) await new Promise((r) => setTimeout(r, 10));
  }

  async layout(handle, offset, length, mode) {
    const lay = await this.call('GetLayout', {
      caller: this.caller, handle, offset: String(offset), length: String(length), mode,
    });
    return lay;
  }

  async close() {
    clearInterval(this.timer);
    await this.call('Goodbye', { caller: this.caller });
    this.stream.end();
    this.stub.close();
  }
}

// Stores into the region: the region file is the same memory the server and
// every guest map, so a pwrite at a layout's region_offset is a store into it
// (Node has no mmap; a C or Rust client would map the file and store directly).
function storeAt(regionFd, extents, offset, data) {
  for (const e of extents) {
    if (e.hole) throw new Error('a WRITE layout has no holes');
    const fileOff = Number(e.file_offset);
    const len = Number(e.length);
    const from = Math.max(fileOff, offset);
    const to = Math.min(fileOff + len, offset + data.length);
    if (from >= to) continue;
    const regionOff = Number(e.region_offset) + (from - fileOff);
    fs.writeSync(regionFd, data, from - offset, to - from, regionOff);
  }
}

function loadFrom(regionFd, extents, offset, length) {
  const out = Buffer.alloc(length); // holes read as zeros: never load them
  for (const e of extents) {
    const fileOff = Number(e.file_offset);
    const from = Math.max(fileOff, offset);
    const to = Math.min(fileOff + Number(e.length), offset + length);
    if (from >= to || e.hole) continue;
    fs.readSync(regionFd, out, from - offset, to - from, Number(e.region_offset) + (from - fileOff));
  }
  return out;
}

async function readFile(c, regionFd, file) {
  const opened = await c.call('Open', { caller: c.caller, path: file, read: true });
  const size = Number(opened.attr.size);
  const lay = await c.layout(opened.handle, 0, size, 'LAYOUT_MODE_READ');
  c.checkLease();
  const data = loadFrom(regionFd, lay.extents, 0, size);
  await c.call('Release', { caller: c.caller, handle: opened.handle });
  return data;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const c = new DaxfsClient(args.addr);
  const hello = await c.hello(`node-example pid ${process.pid}`);
  console.log(`session ${hello.client_id} region ${hello.region_path} block ${hello.block_size}`);
  c.openSession();
  await c.waitForLease();
  const regionFd = fs.openSync(args.region || hello.region_path, 'r+');

  // Write: Create, a WRITE layout of the range, stores, CommitLayout (publishes
  // the size), Release.
  const file = '/hello-from-node.txt';
  const text = Buffer.from(`Hello from Node.js ${process.version}, through a WRITE layout\n`);
  const created = await c.call('Create', {
    caller: c.caller, path: file, mode: 0o644, truncate: true, read: true, write: true,
  });
  const wl = await c.layout(created.handle, 0, text.length, 'LAYOUT_MODE_WRITE');
  c.checkLease();
  storeAt(regionFd, wl.extents, 0, text);
  fs.fdatasyncSync(regionFd); // durability (msync of a file region); visibility is immediate
  await c.call('CommitLayout', {
    caller: c.caller, handle: created.handle, new_size: String(text.length), mtime_ns: '0',
  });
  await c.call('Release', { caller: c.caller, handle: created.handle });
  console.log(`wrote ${file}: ${text.length} bytes at region offset ${wl.extents[0].region_offset}`);

  // Read it back through a READ layout of a fresh open.
  const back = await readFile(c, regionFd, file);
  if (!back.equals(text)) throw new Error(`read back ${JSON.stringify(back.toString())}`);
  console.log(`read back ${file}: ${JSON.stringify(back.toString())}`);

  if (args.read) {
    const other = await readFile(c, regionFd, args.read);
    console.log(`read ${args.read}: ${JSON.stringify(other.toString())}`);
  }

  // A recall: hold a layout of a file, then truncate it. Every holder of the
  // freed blocks (we are one) gets a LayoutRecall on its stream, and the
  // truncate waits for the RecallDone our stream handler sends.
  const victim = '/recall-me.txt';
  const v = await c.call('Create', { caller: c.caller, path: victim, mode: 0o644, write: true, read: true });
  const vl = await c.layout(v.handle, 0, 8192, 'LAYOUT_MODE_WRITE');
  storeAt(regionFd, vl.extents, 0, Buffer.alloc(8192, 0x61));
  await c.call('CommitLayout', { caller: c.caller, handle: v.handle, new_size: '8192', mtime_ns: '0' });
  await c.call('SetAttr', { caller: c.caller, handle: v.handle, size: '0' });
  await c.call('Release', { caller: c.caller, handle: v.handle });
  await c.call('Unlink', { caller: c.caller, path: victim });
  if (c.recalls.length === 0) throw new Error('no recall arrived');

  // Stay a while: the session lives as long as we renew it.
  if (args.linger > 0) {
    const before = c.renewals;
    await new Promise((r) => setTimeout(r, args.linger * 1000));
    c.checkLease();
    await c.call('GetAttr', { caller: c.caller, path: file });
    console.log(`lingered ${args.linger} s: ${c.renewals - before} renewals, session alive`);
  }
  const stats = await c.call('Stats', {});
  console.log(`recalls answered ${c.recalls.length}, pending ${stats.pending_recalls}, quarantined ${stats.quarantined_bytes}`);
  fs.closeSync(regionFd);
  await c.close();
  console.log('goodbye');
}

main().catch((err) => {
  console.error(`daxfs-example: ${err.message}`);
  process.exit(1);
});
