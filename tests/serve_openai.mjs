// The npm `openai` client against `joule serve`: a completion, the same streamed, the model
// list and a refused request. argv: base URL, model id, file with `joule generate`'s text.
import OpenAI from 'openai';
import { readFileSync } from 'node:fs';

const [, , base, model, expectedPath] = process.argv;
let expected = readFileSync(expectedPath, 'latin1');
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60000 });
const fail = (msg) => { console.error(`FAIL: ${msg}`); process.exit(1); };
const req = { model, prompt: 'the rain', max_tokens: 24, temperature: 0 };

const r = await client.completions.create(req);
const text = r.choices[0].text;
// `joule generate` ends its output with a newline when the text does not
if (expected.endsWith('\n') && !text.endsWith('\n')) expected = expected.slice(0, -1);
if (text !== expected) fail(`completion ${JSON.stringify(text)} != joule generate's ${JSON.stringify(expected)}`);
if (r.usage.prompt_tokens !== 8) fail(`prompt_tokens ${r.usage.prompt_tokens}`);
if (r.choices[0].finish_reason === 'length' && r.usage.completion_tokens !== 24) fail('length without 24 tokens');

const stream = await client.completions.create({ ...req, stream: true });
let streamed = '', events = 0, finish = null;
for await (const chunk of stream) {
  streamed += chunk.choices[0].text;
  events++;
  if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
}
if (streamed !== text) fail(`stream ${JSON.stringify(streamed)} != ${JSON.stringify(text)}`);
if (finish !== r.choices[0].finish_reason) fail(`stream finish_reason ${finish}`);

const models = await client.models.list();
if (models.data.length !== 1 || models.data[0].id !== model) fail(`models ${JSON.stringify(models.data)}`);

try {
  await client.completions.create({ ...req, max_tokens: 0 });
  fail('max_tokens 0 was accepted');
} catch (e) {
  if (e.status !== 400 || !String(e.message).includes('max_tokens')) fail(`max_tokens 0: ${e.status} ${e.message}`);
}
console.log(`ok: ${JSON.stringify(text)} (${events} events streamed, finish ${finish})`);
