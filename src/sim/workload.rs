//! What the simulated clients send, generated from the seed before the run starts (so the
//! interleaving never changes the workload): single commands and bulk calls whose chunks
//! cross the 32-event page, CSV files through the real ingestion path, exact resends of
//! earlier operations, transaction ids shared between clients (with the same and with
//! different content), reversals of everything (live, reversed, refused, unknown targets,
//! reversals), amounts at the limits, business times across months and out of order.
//!
//! Must never: depend on what the run does (it is fixed before the first task starts).

use std::collections::HashMap;

use crate::domain::{AccountId, Command, Money, Timestamp, TxnId};
use crate::service::command::AccountChunk;
use crate::sim::config::{Config, Draw};
use crate::workload::{Picker, Rng};

/// One request of a client.
#[derive(Debug, Clone)]
pub enum Op {
    Single {
        account: AccountId,
        command: Command,
    },
    /// One `submit_chunks` call.
    Bulk { chunks: Vec<AccountChunk> },
    /// A CSV body through `ingest`, with the commands of its valid rows (file order).
    Ingest {
        csv: String,
        rows: Vec<(AccountId, Command)>,
        invalid: u64,
    },
}

/// 2026-01-01T00:00:00Z: business times start here.
const EPOCH_MS: i64 = 1_767_225_600_000;
const DAY_MS: i64 = 86_400_000;

struct Gen<'a> {
    config: &'a Config,
    rng: Rng,
    picker: Picker,
    accounts: Vec<AccountId>,
    /// Every txn id generated per account, for reversal targets.
    known: HashMap<usize, Vec<TxnId>>,
    /// Content of each shared id, per account.
    shared: HashMap<(usize, u64), Command>,
    next_id: u64,
}

/// Every client's operations, in order.
pub fn generate(config: &Config) -> Vec<Vec<Op>> {
    let mut g = Gen {
        config,
        rng: Rng::new(config.seed ^ 0x0000_C11E_0000_0003),
        picker: Picker::new(config.accounts, config.zipf),
        accounts: (0..config.accounts)
            .map(|i| AccountId::new(format!("a{i}")).expect("generated ids are valid"))
            .collect(),
        known: HashMap::new(),
        shared: HashMap::new(),
        next_id: 0,
    };
    let mut all: Vec<Vec<Op>> = Vec::new();
    for client in 0..config.clients {
        let mut ops: Vec<Op> = Vec::new();
        for _ in 0..config.ops_per_client {
            let resend = g.rng.chance(config.resend);
            let earlier = all.iter().flatten().chain(ops.iter()).count();
            let op = if resend && earlier > 0 {
                let k = g.rng.below(earlier as u64) as usize;
                all.iter().flatten().chain(ops.iter()).nth(k).cloned()
            } else {
                None
            };
            let op = op.unwrap_or_else(|| g.op(client));
            ops.push(op);
        }
        all.push(ops);
    }
    all
}

impl Gen<'_> {
    fn op(&mut self, client: usize) -> Op {
        if !self.rng.chance(self.config.bulk_share) {
            let a = self.picker.pick(&mut self.rng);
            let command = self.command(client, a);
            return Op::Single {
                account: self.accounts[a].clone(),
                command,
            };
        }
        let width = self.rng.between(1, self.config.accounts.min(6) as u64) as usize;
        let mut chosen: Vec<usize> = Vec::new();
        for _ in 0..width * 3 {
            let a = self.picker.pick(&mut self.rng);
            if !chosen.contains(&a) && chosen.len() < width {
                chosen.push(a);
            }
        }
        let chunks: Vec<AccountChunk> = chosen
            .into_iter()
            .map(|a| {
                let commands = if self.rng.chance(self.config.page_races) {
                    self.deposit_run(client)
                } else {
                    let n = self.chunk_len();
                    (0..n).map(|_| self.command(client, a)).collect()
                };
                AccountChunk {
                    account: self.accounts[a].clone(),
                    commands,
                }
            })
            .collect();
        if self.rng.chance(self.config.via_ingest) {
            self.csv(chunks)
        } else {
            Op::Bulk { chunks }
        }
    }

    /// Chunk lengths bunch around the page size (32) and its multiples.
    fn chunk_len(&mut self) -> usize {
        let max = self.config.chunk_max as u64;
        let n = match self.rng.below(3) {
            0 => self.rng.pick(&[1, 31, 32, 33, 64, 65]),
            _ => self.rng.between(1, max),
        };
        n.clamp(1, max) as usize
    }

    /// Fresh small deposits, as many as fill one or two pages exactly or just over.
    fn deposit_run(&mut self, client: usize) -> Vec<Command> {
        let n = self.rng.pick(&[32u64, 33, 64, 65]);
        (0..n)
            .map(|_| Command::Deposit {
                txn_id: self.txn(client),
                amount: Money(self.rng.between(1, 100) as i64),
                occurred_at: self.at(),
            })
            .collect()
    }

    fn txn(&mut self, client: usize) -> TxnId {
        self.next_id += 1;
        TxnId::new(format!("c{client}-{}", self.next_id)).expect("generated ids are valid")
    }

    fn at(&mut self) -> Timestamp {
        let month = self.rng.below(u64::from(self.config.months)) as i64;
        let ms = EPOCH_MS + month * 31 * DAY_MS + self.rng.below(28 * DAY_MS as u64) as i64;
        Timestamp::from_millis(ms).expect("simulated business times are in range")
    }

    fn amount(&mut self) -> Money {
        let max = self.config.policy.amount_max;
        Money(match self.rng.below(40) {
            0 => 0,
            1 => -5,
            2 => max,
            3 => max.saturating_add(1),
            4 => i64::MAX,
            5 => 1,
            _ => self.rng.between(1, 10_000) as i64,
        })
    }

    fn command(&mut self, client: usize, account: usize) -> Command {
        if self.rng.chance(self.config.shared_ids) {
            let k = self.rng.below(8);
            if let Some(c) = self.shared.get(&(account, k)).cloned() {
                return if self.rng.chance(self.config.reused_ids) {
                    self.altered(&c)
                } else {
                    c
                };
            }
            let id = TxnId::new(format!("s{k}")).expect("generated ids are valid");
            let c = self.fresh(id, account);
            self.shared.insert((account, k), c.clone());
            return c;
        }
        let id = self.txn(client);
        self.fresh(id, account)
    }

    fn fresh(&mut self, txn_id: TxnId, account: usize) -> Command {
        let occurred_at = self.at();
        let known = self.known.entry(account).or_default();
        let roll = self.rng.below(10);
        let c = if roll < 2 && !known.is_empty() || roll == 2 {
            let reverses = if roll == 2 || known.is_empty() {
                TxnId::new(format!("ghost-{}", self.rng.below(3))).expect("valid id")
            } else {
                known[self.rng.below(known.len() as u64) as usize].clone()
            };
            Command::Reverse {
                txn_id: txn_id.clone(),
                reverses,
                occurred_at,
            }
        } else if roll < 6 {
            Command::Deposit {
                txn_id: txn_id.clone(),
                amount: self.amount(),
                occurred_at,
            }
        } else {
            Command::Withdraw {
                txn_id: txn_id.clone(),
                amount: self.amount(),
                occurred_at,
            }
        };
        self.known.entry(account).or_default().push(txn_id);
        c
    }

    /// The same txn id with other content: another amount, kind or business time.
    fn altered(&mut self, c: &Command) -> Command {
        let at = self.at();
        match c.clone() {
            Command::Deposit {
                txn_id,
                amount,
                occurred_at,
            } => Command::Withdraw {
                txn_id,
                amount,
                occurred_at,
            },
            Command::Withdraw { txn_id, amount, .. } => Command::Withdraw {
                txn_id,
                amount: Money(amount.minor().saturating_add(1)),
                occurred_at: at,
            },
            Command::Reverse { txn_id, .. } => Command::Deposit {
                txn_id,
                amount: Money(7),
                occurred_at: at,
            },
        }
    }

    /// The chunks as one CSV body, rows of different accounts interleaved (each
    /// account's rows keep their order), now and then with an invalid row.
    fn csv(&mut self, chunks: Vec<AccountChunk>) -> Op {
        let mut queues: Vec<(AccountId, std::collections::VecDeque<Command>)> = chunks
            .into_iter()
            .map(|c| (c.account, c.commands.into()))
            .collect();
        let mut csv = String::from("txn_id,account,kind,amount,occurred_at,reverses\n");
        let (mut rows, mut invalid) = (Vec::new(), 0);
        while queues.iter().any(|(_, q)| !q.is_empty()) {
            let live: Vec<usize> = (0..queues.len())
                .filter(|&i| !queues[i].1.is_empty())
                .collect();
            let i = self.rng.pick(&live);
            let (account, q) = &mut queues[i];
            let Some(c) = q.pop_front() else { continue };
            if self.rng.chance(0.03) {
                csv.push_str(&format!(
                    "bad-{},{account},deposit,x,2026-01-01T00:00:00Z,\n",
                    rows.len()
                ));
                invalid += 1;
            }
            csv.push_str(&row(account, &c));
            rows.push((account.clone(), c));
        }
        Op::Ingest { csv, rows, invalid }
    }
}

fn row(account: &AccountId, c: &Command) -> String {
    match c {
        Command::Deposit {
            txn_id,
            amount,
            occurred_at,
        } => format!("{txn_id},{account},deposit,{amount},{occurred_at},\n"),
        Command::Withdraw {
            txn_id,
            amount,
            occurred_at,
        } => format!("{txn_id},{account},withdrawal,{amount},{occurred_at},\n"),
        Command::Reverse {
            txn_id,
            reverses,
            occurred_at,
        } => format!("{txn_id},{account},reversal,,{occurred_at},{reverses}\n"),
    }
}
