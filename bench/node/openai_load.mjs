// The official OpenAI Node SDK as its users call it (its timeout, its two retries), for bench.loadgen's
// `openai-node-client` protocol: bench.loadgen starts this script, reads the calls it writes, and
// summarizes them as it does its own drivers' calls.
//
//   node bench/node/openai_load.mjs '{"target": "127.0.0.1:8080", "model": "m", "texts": "texts.json",
//       "mode": "open", "rate": 100, "duration": 8, "warmup": 0, "timeout": 0.1, "retries": 2,
//       "concurrency": 1, "maxOutstanding": 100000, "seed": 0, "deadlineHeader": false}' > calls.json
//
// Output: {"calls": [[status, seconds late to send, seconds from sending to the end, characters]],
// "overflow": n, "elapsed": s, "cpu": s}; status "OK" or the failure's kind as bench.loadgen names it.
import fs from 'node:fs';
import OpenAI from 'openai';

const options = JSON.parse(process.argv[2]);
const texts = JSON.parse(fs.readFileSync(options.texts, 'utf8'));
const client = new OpenAI({
  baseURL: `http://${options.target}/v1`, apiKey: 'unused', timeout: Math.round(options.timeout * 1000),
  maxRetries: options.retries,
  // What a caller told to send its deadline would add; the SDK by itself sends none for a client-wide timeout.
  defaultHeaders: options.deadlineHeader ? { 'X-Request-Timeout': String(options.timeout) } : {},
});

// mulberry32: a seeded generator, so a phase's arrivals and texts repeat run to run.
let state = (options.seed + 0x6d2b79f5) >>> 0;
function random() {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = () => texts[Math.floor(random() * texts.length)];
const now = () => performance.now() / 1000;
const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

function kind(error) {
  if (error instanceof OpenAI.APIConnectionTimeoutError) return 'timeout';
  if (error instanceof OpenAI.APIError && error.status) return `http-${error.status}`;
  return error?.constructor?.name ?? 'Error';
}

async function call(text) {
  // truncate: the other peers cut at max_length silently (millibatch's own field, passed through).
  const response = await client.embeddings.create({ model: options.model, input: [text], encoding_format: 'float',
    truncate: true });
  if (response.data.length !== 1) throw new Error('wrong-count');
}

const calls = [];
async function timed(text, scheduled) {
  const sent = now();
  let status = 'OK';
  try {
    await call(text);
  } catch (error) {
    status = kind(error);
  }
  calls.push([status, sent - scheduled, now() - sent, text.length]);
}

async function closedLoop(concurrency, duration, record) {
  const stopAt = now() + duration;
  const worker = async () => {
    while (now() < stopAt) {
      if (record) await timed(pick(), now());
      else await call(pick()).catch(() => {});
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

async function openLoop(rate, duration, maxOutstanding) {
  const start = now();
  const pending = new Set();
  let next = start;
  let overflow = 0;
  for (;;) {
    next += -Math.log(1 - random()) / rate;
    if (next - start >= duration) break;
    const delay = next - now();
    if (delay > 0) await sleep(delay);
    if (pending.size >= maxOutstanding) {
      overflow += 1;
      continue;
    }
    const task = timed(pick(), next);
    pending.add(task);
    task.finally(() => pending.delete(task));
  }
  await Promise.all(pending);
  return overflow;
}

async function probe(wait) {
  const giveUp = now() + wait;
  for (;;) {
    try {
      await call(texts[0]);
      return;
    } catch (error) {
      if (now() > giveUp) throw new Error(`peer not ready after ${wait}s: ${kind(error)}: ${error.message}`);
      await sleep(0.5);
    }
  }
}

if (options.mode === 'probe') {
  await probe(options.duration);
  process.stdout.write('{"calls": [], "overflow": 0, "elapsed": 0, "cpu": 0}\n');
} else {
  if (options.warmup > 0) await closedLoop(Math.max(1, Math.min(options.concurrency, 8)), options.warmup, false);
  calls.length = 0;
  const cpuBefore = process.cpuUsage();
  const start = now();
  let overflow = 0;
  if (options.mode === 'closed') await closedLoop(options.concurrency, options.duration, true);
  else overflow = await openLoop(options.rate, options.duration, options.maxOutstanding);
  const elapsed = Math.max(options.duration, now() - start);
  const cpu = process.cpuUsage(cpuBefore);
  process.stdout.write(JSON.stringify({ calls, overflow, elapsed, cpu: (cpu.user + cpu.system) / 1e6 }) + '\n');
}
