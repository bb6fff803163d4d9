// Reads of one hot account (seed it with ACCOUNTS=1): balances as of a random business time
// within the generated span, and history pages from a random version, at a constant
// arrival rate. Bounded: RATE req/s for DURATION, at most MAX_VUS in flight; stops by itself.
import http from 'k6/http';
import { check } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:3300';
const RATE = parseInt(__ENV.RATE || '200', 10);
const DURATION = __ENV.DURATION || '20s';
// The span `tally gen` writes: 2026-10-01 plus 61 days.
const START_MS = Date.UTC(2026, 9, 1);
const SPAN_MS = 61 * 86400000;
const EVENTS = parseInt(__ENV.SEED_ROWS || '1000000', 10) * 0.9;

export const options = {
  // p99 is what the targets name; k6's default summary stops at p95.
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
  scenarios: {
    hot: {
      executor: 'constant-arrival-rate',
      rate: RATE, timeUnit: '1s', duration: DURATION,
      preAllocatedVUs: 20, maxVUs: parseInt(__ENV.MAX_VUS || '100', 10),
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{name:balance_at}': ['p(99)<10'],
    'http_req_duration{name:events}': ['p(99)<10'],
  },
};

export default function () {
  if (Math.random() < 0.5) {
    const at = new Date(START_MS + Math.floor(Math.random() * SPAN_MS)).toISOString();
    const res = http.get(`${BASE}/v1/accounts/acct-000000/balance?at=${at}`, { tags: { name: 'balance_at' } });
    check(res, { 'balance at': (r) => r.status === 200 });
  } else {
    const from = 1 + Math.floor(Math.random() * EVENTS);
    const res = http.get(`${BASE}/v1/accounts/acct-000000/events?from=${from}&limit=100`, { tags: { name: 'events' } });
    check(res, { 'history page': (r) => r.status === 200 });
  }
}
