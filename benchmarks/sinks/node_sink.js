#!/usr/bin/env node
// nodemailer smtp-server sink for the benchmark (started by ../run.py --with-node).
// Usage: node node_sink.js PORT      (smtp-server found via NODE_PATH or BENCH_NODE_MODULES)
// Accepts everything; onData reads and counts the stream; AUTH and STARTTLS disabled,
// no reverse lookup, no size limit, logger off, backlog 511. smtp-server holds every new
// connection 100 ms before its greeting (a hard-coded early-talker check); it is left as
// shipped. Prints "bench-adapter node-smtp-server ..." once listening and
// "BENCH messages=N bytes=B" on SIGTERM/SIGINT.
'use strict';
const path = require('path');

function find(name) {
    const places = [name];
    if (process.env.BENCH_NODE_MODULES) places.push(path.join(process.env.BENCH_NODE_MODULES, name));
    for (const p of places) {
        try { return require.resolve(p); } catch (e) { /* next */ }
    }
    throw new Error(`cannot find ${name}: set BENCH_NODE_MODULES or NODE_PATH`);
}

const main = find('smtp-server');
const { SMTPServer } = require(main);
let version = '?';
try {
    let dir = path.dirname(main);
    while (dir !== path.dirname(dir) && path.basename(dir) !== 'smtp-server') dir = path.dirname(dir);
    version = require(path.join(dir, 'package.json')).version;
} catch (e) { /* informative only */ }

const port = Number(process.argv[2]);
let messages = 0, bytes = 0;
const server = new SMTPServer({
    name: 'localhost',
    logger: false,
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    disableReverseLookup: true,
    onData(stream, session, callback) {
        let n = 0;
        stream.on('data', (chunk) => { n += chunk.length; });
        stream.on('end', () => { messages += 1; bytes += n; callback(null, 'OK'); });
    },
});
server.on('error', (err) => console.error('server error:', err && err.message));
server.listen(port, '127.0.0.1', 511, () => {
    console.log(`bench-adapter node-smtp-server smtp-server ${version} node ${process.version} port=${port}`);
});
const stop = () => {
    process.stdout.write(`BENCH messages=${messages} bytes=${bytes}\n`, () => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
