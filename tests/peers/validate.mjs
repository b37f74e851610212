// The FHIR.js validator (npm `fhir`, R4) as a filter: reads a JSON array of resources on stdin,
// writes a JSON array of {valid, messages} (one per resource, same order) on stdout.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { Fhir } = require('fhir');

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const resources = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const fhir = new Fhir();
const results = resources.map((resource) => {
  const result = fhir.validate(resource, { errorOnUnexpected: true });
  return { valid: result.valid, messages: result.messages };
});
process.stdout.write(JSON.stringify(results));
