// Balance reads over a Zipf(1.0) account mix at a constant arrival rate.
// Bounded: RATE req/s for DURATION, at most MAX_VUS in flight; stops by itself.
import http from 'k6/http';
import { check } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:3300';
const ACCOUNTS = parseInt(__ENV.ACCOUNTS || '10000', 10);
const RATE = parseInt(__ENV.RATE || '2000', 10);
const DURATION = __ENV.DURATION || '20s';

// Zipf(1.0) CDF over account ranks, built once per VU.
const cdf = (() => {
  const out = new Array(ACCOUNTS);
  let acc = 0;
  for (let k = 1; k <= ACCOUNTS; k++) { acc += 1 / k; out[k - 1] = acc; }
  return out.map((c) => c / acc);
})();

function pick() {
  const u = Math.random();
  let lo = 0, hi = cdf.length - 1;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (cdf[mid] < u) lo = mid + 1; else hi = mid; }
  return lo;
}

export const options = {
  // p99 is what the targets name; k6's default summary stops at p95.
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
  scenarios: {
    reads: {
      executor: 'constant-arrival-rate',
      rate: RATE, timeUnit: '1s', duration: DURATION,
      preAllocatedVUs: 20, maxVUs: parseInt(__ENV.MAX_VUS || '100', 10),
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<50'],
  },
};

// An account the seed never booked answers 404: expected, not a failure.
http.setResponseCallback(http.expectedStatuses(200, 404));

export default function () {
  const account = `acct-${String(pick()).padStart(6, '0')}`;
  const res = http.get(`${BASE}/v1/accounts/${account}/balance`, { tags: { name: 'balance' } });
  check(res, { 'balance or unknown account': (r) => r.status === 200 || r.status === 404 });
}
