//! Control-plane metrics of the ADS server, all prefixed `jalur_xds_`.
//!
//! Counters and histograms are updated by the stream tasks; the gauges about connected clients
//! (count, versions, out of sync) are computed from the [`SyncRegistry`] at scrape time, so they
//! can never drift from what the status API shows.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::resource::TypeUrl;
use crate::status::SyncRegistry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeKind {
    r#type: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindVersion {
    kind: String,
    version: String,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s: pushes are usually milliseconds, a stuck client shows up in the tail.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Counters and histograms shared by all streams. Cheap to clone (every metric is an Arc).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pushes: Family<TypeKind, Counter>,
    push_bytes: Family<TypeKind, Counter>,
    nacks: Family<TypeKind, Counter>,
    refused: Family<CodeLabel, Counter>,
    push_latency: HistogramFamily<TypeLabel>,
    convergence: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            pushes: Family::default(),
            push_bytes: Family::default(),
            nacks: Family::default(),
            refused: Family::default(),
            push_latency: Family::new_with_constructor(latency_histogram),
            convergence: latency_histogram(),
        }
    }

    pub(crate) fn register(&self, registry: &mut Registry, sync: SyncRegistry) {
        let r = registry.sub_registry_with_prefix("jalur_xds");
        r.register(
            "pushes",
            "xDS responses sent, by type and client kind",
            self.pushes.clone(),
        );
        r.register(
            "push_bytes",
            "Encoded size of xDS responses sent, by type and client kind",
            self.push_bytes.clone(),
        );
        r.register(
            "nacks",
            "xDS responses rejected by clients",
            self.nacks.clone(),
        );
        r.register(
            "streams_refused",
            "xDS streams the control plane refused to serve (Generator::admit), by gRPC code",
            self.refused.clone(),
        );
        r.register(
            "push_latency_seconds",
            "Time from a config generation change being observed to its response being queued",
            self.push_latency.clone(),
        );
        r.register(
            "convergence_seconds",
            "Time from a config generation change until every client answered its push or left",
            self.convergence.clone(),
        );
        r.register_collector(Box::new(ClientGauges { sync }));
    }

    pub(crate) fn pushed(&self, type_url: TypeUrl, kind: &str, bytes: usize) {
        let labels = TypeKind {
            r#type: type_url.short().to_string(),
            kind: kind.to_string(),
        };
        self.pushes.get_or_create(&labels).inc();
        self.push_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    pub(crate) fn push_latency(&self, type_url: TypeUrl, seconds: f64) {
        let labels = TypeLabel {
            r#type: type_url.short().to_string(),
        };
        self.push_latency.get_or_create(&labels).observe(seconds);
    }

    pub(crate) fn nacked(&self, type_url: TypeUrl, kind: &str) {
        let labels = TypeKind {
            r#type: type_url.short().to_string(),
            kind: kind.to_string(),
        };
        self.nacks.get_or_create(&labels).inc();
    }

    pub(crate) fn refused(&self, status: &tonic::Status) {
        let labels = CodeLabel {
            code: format!("{:?}", status.code()),
        };
        self.refused.get_or_create(&labels).inc();
    }

    pub(crate) fn converged(&self, seconds: f64) {
        self.convergence.observe(seconds);
    }
}

/// Gauges about the connected clients, read from the sync registry on every scrape.
#[derive(Debug)]
struct ClientGauges {
    sync: SyncRegistry,
}

#[derive(Default)]
struct ClientCounts {
    by_kind: BTreeMap<String, i64>,
    by_version: BTreeMap<(String, String), i64>,
    out_of_sync: i64,
}

impl ClientGauges {
    fn count(&self) -> ClientCounts {
        self.sync.with_clients(|clients| {
            let mut counts = ClientCounts::default();
            for c in clients {
                *counts.by_kind.entry(c.kind.clone()).or_default() += 1;
                let key = (c.kind.clone(), c.client_version.clone());
                *counts.by_version.entry(key).or_default() += 1;
                counts.out_of_sync += i64::from(!c.in_sync);
            }
            counts
        })
    }
}

impl Collector for ClientGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.count();

        let by_kind: Family<KindLabel, Gauge> = Family::default();
        for (kind, n) in counts.by_kind {
            by_kind.get_or_create(&KindLabel { kind }).set(n);
        }
        let m = encoder.encode_descriptor(
            "connected_clients",
            "Connected xDS streams by client kind",
            None,
            by_kind.metric_type(),
        )?;
        by_kind.encode(m)?;

        let by_version: Family<KindVersion, Gauge> = Family::default();
        for ((kind, version), n) in counts.by_version {
            by_version
                .get_or_create(&KindVersion { kind, version })
                .set(n);
        }
        let m = encoder.encode_descriptor(
            "clients_by_version",
            "Connected xDS clients by kind and user agent version (version drift)",
            None,
            by_version.metric_type(),
        )?;
        by_version.encode(m)?;

        let out_of_sync = ConstGauge::new(counts.out_of_sync);
        let m = encoder.encode_descriptor(
            "clients_out_of_sync",
            "Clients with an un-ACKed or NACKed last response for some type",
            None,
            out_of_sync.metric_type(),
        )?;
        out_of_sync.encode(m)
    }
}

/// Keeps no more rounds than this; older ones are dropped unobserved (a client that never
/// answers must not grow memory without bound).
const MAX_ROUNDS: usize = 64;

/// Tracks, per config generation, which clients have yet to settle on it, to measure how long the
/// whole fleet takes to converge after a change.
///
/// A round starts when the first stream observes a generation and waits on every stream connected
/// at that moment. A stream leaves a round once it holds that generation (or a newer one) and has
/// no response awaiting an ACK or NACK, or when it disconnects.
#[derive(Debug, Default)]
pub(crate) struct Convergence {
    state: Mutex<RoundState>,
}

#[derive(Debug, Default)]
struct RoundState {
    live: HashSet<u64>,
    newest: u64,
    rounds: BTreeMap<u64, Round>,
}

#[derive(Debug)]
struct Round {
    started: Instant,
    pending: HashSet<u64>,
}

impl Convergence {
    pub(crate) fn joined(&self, conn_id: u64) {
        self.lock().live.insert(conn_id);
    }

    /// Returns the durations of rounds this departure completed.
    pub(crate) fn left(&self, conn_id: u64) -> Vec<f64> {
        let mut state = self.lock();
        state.live.remove(&conn_id);
        state.release(conn_id, u64::MAX)
    }

    /// A stream saw generation `generation`; returns when the server first saw it.
    pub(crate) fn observed(&self, generation: u64) -> Instant {
        let mut state = self.lock();
        let now = Instant::now();
        if generation > state.newest {
            state.newest = generation;
            let pending = state.live.clone();
            state.rounds.insert(
                generation,
                Round {
                    started: now,
                    pending,
                },
            );
            while state.rounds.len() > MAX_ROUNDS {
                state.rounds.pop_first();
            }
        }
        state.rounds.get(&generation).map_or(now, |r| r.started)
    }

    /// Stream `conn_id` holds generation `generation` and awaits no answer; returns the durations
    /// of rounds this completed.
    pub(crate) fn settled(&self, conn_id: u64, generation: u64) -> Vec<f64> {
        self.lock().release(conn_id, generation)
    }

    fn lock(&self) -> MutexGuard<'_, RoundState> {
        // The state is a set of counters; a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RoundState {
    fn release(&mut self, conn_id: u64, up_to: u64) -> Vec<f64> {
        let mut done = Vec::new();
        self.rounds.retain(|&generation, round| {
            if generation <= up_to {
                round.pending.remove(&conn_id);
            }
            if round.pending.is_empty() {
                done.push(round.started.elapsed().as_secs_f64());
                return false;
            }
            true
        });
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_completes_when_every_live_client_settles_or_leaves() {
        let c = Convergence::default();
        c.joined(1);
        c.joined(2);
        c.joined(3);
        c.observed(5);
        assert!(c.settled(1, 5).is_empty());
        // Holding an older generation does not count.
        assert!(c.settled(2, 4).is_empty());
        assert!(c.left(3).is_empty());
        assert_eq!(c.settled(2, 6).len(), 1);
        assert!(c.lock().rounds.is_empty());
    }

    #[test]
    fn late_joiners_are_not_waited_for() {
        let c = Convergence::default();
        c.joined(1);
        let started = c.observed(2);
        c.joined(2);
        assert_eq!(c.observed(2), started);
        assert_eq!(c.settled(1, 2).len(), 1);
    }

    #[test]
    fn rounds_are_bounded() {
        let c = Convergence::default();
        c.joined(1);
        for generation in 1..=(MAX_ROUNDS as u64 + 10) {
            c.observed(generation);
        }
        assert_eq!(c.lock().rounds.len(), MAX_ROUNDS);
    }
}
