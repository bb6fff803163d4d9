//! The embedded composition root: one redb store for events, snapshots and quarantine, an
//! in-process stream with consumers playing Lambda's event source mapping, and the three
//! services wired over them. Used by the CLI and the end-to-end tests.

use std::path::Path;
use std::sync::Arc;

use crate::adapters::embedded::EmbeddedStore;
use crate::adapters::embedded::stream::{Consumers, EmbeddedStream, Mapping, spawn_consumers};
use crate::domain::Policy;
use crate::domain::limits::BUCKETS_DEFAULT;
use crate::ports::StoreError;
use crate::service::command::{Clock, CommandService, system_clock};
use crate::service::metrics::Metrics;
use crate::service::projector::{CACHE_ENTRIES_DEFAULT, CatchUp, Projector};
use crate::service::query::QueryService;

/// Settings of an embedded instance.
#[derive(Clone)]
pub struct Settings {
    pub policy: Policy,
    pub buckets: u32,
    pub shards: u32,
    pub mapping: Mapping,
    pub cache_entries: usize,
    pub clock: Clock,
}

impl Settings {
    /// The embedded instance the configuration describes (policy, buckets, shards, mapping,
    /// cache), on the wall clock.
    pub fn from_config(config: &crate::config::Config) -> Settings {
        Settings {
            policy: config.policy,
            buckets: config.buckets,
            shards: config.shards,
            mapping: config.mapping,
            cache_entries: config.cache_entries,
            clock: system_clock(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: Policy::default(),
            buckets: BUCKETS_DEFAULT,
            shards: 4,
            mapping: Mapping::default(),
            cache_entries: CACHE_ENTRIES_DEFAULT,
            clock: system_clock(),
        }
    }
}

pub type EmbeddedProjector = Projector<EmbeddedStore, EmbeddedStore, EmbeddedStore>;

/// A running embedded ledger.
pub struct Embedded {
    pub store: EmbeddedStore,
    pub stream: Arc<EmbeddedStream>,
    pub metrics: Arc<Metrics>,
    pub projector: Arc<EmbeddedProjector>,
    pub commands: CommandService<EmbeddedStore, Arc<EmbeddedStream>>,
    pub query: QueryService<EmbeddedStore, EmbeddedStore>,
    pub catch_up: CatchUp,
    consumers: Consumers,
}

impl Embedded {
    /// Opens the store in `dir` (or in memory for `None`), catches every snapshot up to its
    /// events, and starts the stream consumers.
    pub async fn start(dir: Option<&Path>, settings: Settings) -> Result<Embedded, StoreError> {
        let store = match dir {
            Some(dir) => EmbeddedStore::open(dir)?,
            None => EmbeddedStore::in_memory()?,
        };
        Self::start_with(store, settings).await
    }

    /// Starts on an already open store (tests restart on the same store this way).
    pub async fn start_with(
        store: EmbeddedStore,
        settings: Settings,
    ) -> Result<Embedded, StoreError> {
        let metrics = Arc::new(Metrics::default());
        let projector = Arc::new(Projector::new(
            store.clone(),
            store.clone(),
            store.clone(),
            settings.cache_entries,
            metrics.clone(),
        ));
        let catch_up = projector.catch_up().await?;
        let stream = EmbeddedStream::new(settings.shards, metrics.clone());
        let consumers = spawn_consumers(stream.clone(), projector.clone(), settings.mapping);
        let commands = CommandService::new(
            store.clone(),
            stream.clone(),
            settings.policy,
            settings.buckets,
            settings.clock.clone(),
        )
        .with_metrics(metrics.clone());
        let query = QueryService::new(store.clone(), store.clone());
        Ok(Embedded {
            store,
            stream,
            metrics,
            projector,
            commands,
            query,
            catch_up,
            consumers,
        })
    }

    /// The HTTP API over this instance.
    pub fn router(&self) -> axum::Router {
        // Concurrent bulk bodies are merged into shared calls: bodies that share accounts
        // would otherwise wait for each other, one body per durable commit.
        crate::http::router(Arc::new(crate::http::Api {
            commands: self.commands.clone().with_coalescing(),
            query: self.query.clone(),
            metrics: self.metrics.clone(),
        }))
    }

    /// Waits until every published record has been projected.
    pub async fn drain(&self) {
        self.consumers.drain().await;
    }

    /// Drains and stops the consumers, then makes every snapshot write durable: after a
    /// clean stop `verify` finds nothing lagging (after a crash, catch-up at the next start
    /// rebuilds what was lost).
    pub async fn shutdown(self) {
        self.consumers.drain().await;
        self.consumers.stop().await;
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "flushing snapshots at shutdown failed; the next start catches up");
        }
    }
}
