// Bulk ingestion: CSV bodies of ROWS rows POSTed at a constant arrival rate.
// Bounded: RATE requests/s for DURATION, at most MAX_VUS in flight; stops by itself.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:3300';
const ACCOUNTS = parseInt(__ENV.ACCOUNTS || '10000', 10);
const ROWS = parseInt(__ENV.ROWS || '1000', 10);
const RATE = parseInt(__ENV.RATE || '20', 10);
const DURATION = __ENV.DURATION || '20s';

export const options = {
  // p99 is what the targets name; k6's default summary stops at p95.
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
  scenarios: {
    bulk: {
      executor: 'constant-arrival-rate',
      rate: RATE, timeUnit: '1s', duration: DURATION,
      preAllocatedVUs: 4, maxVUs: parseInt(__ENV.MAX_VUS || '16', 10),
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<2000'],
  },
};

export default function () {
  const it = exec.scenario.iterationInTest;
  const lines = ['txn_id,account,kind,amount,occurred_at,reverses'];
  for (let i = 0; i < ROWS; i++) {
    const account = `acct-${String(Math.floor(Math.random() * ACCOUNTS)).padStart(6, '0')}`;
    const kind = Math.random() < 0.7 ? 'deposit' : 'withdrawal';
    const amount = 100 + Math.floor(Math.random() * 50000);
    const day = String(1 + Math.floor(Math.random() * 28)).padStart(2, '0');
    lines.push(`k6-${it}-${i},${account},${kind},${amount},2026-11-${day}T12:00:00Z,`);
  }
  const res = http.post(`${BASE}/v1/transactions`, lines.join('\n') + '\n', {
    headers: { 'content-type': 'text/csv' }, tags: { name: 'bulk' }, timeout: '30s',
  });
  check(res, {
    'bulk accepted': (r) => r.status === 200,
    'every row accounted for': (r) => r.status === 200 && r.json('rows') === ROWS,
  });
}
