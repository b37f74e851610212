// A real OAuth 2.0 server for the SMART Backend Services tests: oidc-provider with the
// client_credentials grant and private_key_jwt client authentication.
// Usage: node oauth_server.mjs CONFIG.json   (CONFIG: {port, ttl, clients: [{client_id, jwk, alg}]})
//
// Serves /.well-known/smart-configuration (and under /fhir/) the way a SMART server does,
// counts token requests at /__stats, and prints "READY <port>" once it listens.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const server = http.createServer();
await new Promise((resolve) => server.listen(config.port || 0, '127.0.0.1', resolve));
const port = server.address().port;
const issuer = `http://127.0.0.1:${port}`;
const scopes = ['system/Task.write', 'system/Provenance.write', 'system/ServiceRequest.read',
  'system/*.read', 'system/*.write'];

const provider = new Provider(issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: c.alg,
    jwks: { keys: [c.jwk] },
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: scopes.join(' '),
  })),
  scopes,
  features: { clientCredentials: { enabled: true }, devInteractions: { enabled: false } },
  clientAuthMethods: ['private_key_jwt'],
  enabledJWA: { clientAuthSigningAlgValues: ['RS384', 'ES384'] },
  ttl: { ClientCredentials: () => config.ttl || 300 },
});

let tokenRequests = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/__stats') {
    ctx.body = { tokenRequests };
    return;
  }
  if (ctx.path === '/.well-known/smart-configuration' || ctx.path === '/fhir/.well-known/smart-configuration') {
    ctx.body = {
      issuer,
      token_endpoint: `${issuer}/token`,
      token_endpoint_auth_methods_supported: ['private_key_jwt'],
      token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
      grant_types_supported: ['client_credentials'],
      scopes_supported: scopes,
      capabilities: ['client-confidential-asymmetric'],
    };
    return;
  }
  if (ctx.path === '/token') tokenRequests += 1;
  await next();
});

server.on('request', provider.callback());
process.on('SIGTERM', () => process.exit(0));
process.stdout.write(`READY ${port}\n`);
