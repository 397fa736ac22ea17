//! [`ScrapeSource`]: scrapes every proxy's `/stats/prometheus` itself and keeps, per proxy, a
//! time-ordered ring of what it reported, so a window's numbers are the difference between the
//! newest scrape and the one a window earlier. No Prometheus needed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::text::{self, Kind, Samples};
use super::{MetricsError, MetricsSource, PathSelector, PathStats, Tally, Targets};

/// How long one proxy may take to answer a scrape, connect to last byte.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// A stats page larger than this is refused (a proxy with runaway label cardinality).
const MAX_BODY: usize = 64 << 20;
/// `run` never scrapes more often than this, whatever `interval` says.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What one proxy reported at one moment.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub at: Instant,
    pub samples: Samples,
}

#[derive(Default)]
struct State {
    /// Per proxy, oldest first.
    rings: HashMap<SocketAddr, VecDeque<Arc<Snapshot>>>,
    /// The last scrape failure of each proxy that is failing now.
    errors: BTreeMap<SocketAddr, String>,
}

/// Scrapes the proxies that `targets` names, every `interval`, and remembers `retention` of
/// history per proxy. Windows asked of [`MetricsSource::stats`] should be at most `retention`
/// and well above `interval`.
pub struct ScrapeSource {
    targets: Targets,
    interval: Duration,
    retention: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
    state: Mutex<State>,
}

impl ScrapeSource {
    pub fn new(targets: Targets, interval: Duration, retention: Duration) -> Arc<ScrapeSource> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
        connector.set_nodelay(true);
        Arc::new(ScrapeSource {
            targets,
            interval: interval.max(MIN_INTERVAL),
            retention,
            client: Client::builder(TokioExecutor::new()).build(connector),
            state: Mutex::new(State::default()),
        })
    }

    /// Scrapes every current target once, concurrently, each within about a second, and
    /// records what each answered (or why it did not).
    pub async fn scrape_once(&self) {
        let mut targets = (self.targets)();
        targets.sort();
        targets.dedup();
        let results =
            futures::future::join_all(targets.iter().map(|&addr| self.scrape(addr))).await;
        let mut state = self.lock();
        for (&addr, result) in targets.iter().zip(results) {
            match result {
                Ok(snapshot) => {
                    if state.errors.remove(&addr).is_some() {
                        tracing::info!(target = %addr, "scraping the proxy's metrics works again");
                    }
                    state
                        .rings
                        .entry(addr)
                        .or_default()
                        .push_back(Arc::new(snapshot));
                }
                Err(err) => {
                    if state.errors.get(&addr) != Some(&err) {
                        tracing::warn!(target = %addr, error = %err, "cannot scrape the proxy's metrics");
                    }
                    state.errors.insert(addr, err);
                }
            }
        }
        state.errors.retain(|addr, _| targets.contains(addr));
        prune(&mut state.rings, Instant::now(), self.retention);
    }

    /// Scrapes every `interval` until `shutdown` turns true (or its sender is gone).
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                // Cancelling a scrape half-way is harmless: state changes only at its end.
                () = async {
                    tick.tick().await;
                    self.scrape_once().await;
                } => {}
            }
        }
    }

    /// The proxies whose last scrape failed, and why.
    pub fn last_errors(&self) -> Vec<(SocketAddr, String)> {
        self.lock()
            .errors
            .iter()
            .map(|(addr, err)| (*addr, err.clone()))
            .collect()
    }

    async fn scrape(&self, addr: SocketAddr) -> Result<Snapshot, String> {
        let url = format!("http://{addr}/stats/prometheus");
        let body = match tokio::time::timeout(SCRAPE_TIMEOUT, self.fetch(&url)).await {
            Ok(result) => result?,
            Err(_) => return Err(format!("GET {url}: no answer within {SCRAPE_TIMEOUT:?}")),
        };
        let at = Instant::now();
        let text = String::from_utf8_lossy(&body);
        let samples = text::parse(&text).map_err(|err| format!("GET {url}: {err}"))?;
        Ok(Snapshot { at, samples })
    }

    async fn fetch(&self, url: &str) -> Result<Bytes, String> {
        let request = http::Request::get(url)
            .body(Empty::new())
            .map_err(|err| format!("GET {url}: {err}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| format!("GET {url}: {}", chain(&err)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|err| format!("GET {url}: reading the answer: {err}"))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step, so a panic elsewhere leaves it usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stats_now(&self, path: &PathSelector, window: Duration) -> Result<PathStats, MetricsError> {
        // The window ends now, not at a proxy's newest scrape: measured from a scrape, it could
        // reach a scrape interval back past its start (a migration's previous stage).
        let start = Instant::now().checked_sub(window);
        // A proxy not scraped within the window (gone, replaced, or failing to answer) has no
        // live evidence to give: its last numbers must not stand in for the present.
        let fresh_after = start;
        let rings: Vec<Vec<Arc<Snapshot>>> = {
            let state = self.lock();
            state
                .rings
                .values()
                .filter(|ring| {
                    let newest = ring.back().map(|s| s.at);
                    fresh_after.is_none_or(|after| newest.is_some_and(|at| at > after))
                })
                .map(|ring| ring.iter().cloned().collect())
                .collect()
        };
        if rings.iter().all(Vec::is_empty) {
            return Err(self.no_data());
        }
        Ok(window_stats(&rings, path, start))
    }

    fn no_data(&self) -> MetricsError {
        let targets = (self.targets)().len();
        let errors = self.last_errors();
        let detail = if targets == 0 {
            "there are no proxies to scrape".to_string()
        } else if errors.is_empty() {
            "none has been scraped yet".to_string()
        } else {
            let failures: Vec<String> = errors
                .iter()
                .map(|(addr, err)| format!("{addr}: {err}"))
                .collect();
            format!("no scrape has succeeded; {}", failures.join("; "))
        };
        MetricsError::NoScrapeData { targets, detail }
    }
}

impl MetricsSource for ScrapeSource {
    fn describe(&self) -> String {
        let n = (self.targets)().len();
        format!("scraping {n} prox{}", if n == 1 { "y" } else { "ies" })
    }

    fn stats<'a>(
        &'a self,
        path: &'a PathSelector,
        window: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<PathStats, MetricsError>> + Send + 'a>> {
        Box::pin(async move { self.stats_now(path, window) })
    }
}

/// Drops snapshots older than `retention`, except the newest of those (the baseline of a
/// window as long as the retention), and proxies with nothing newer than `retention` left.
pub(super) fn prune(
    rings: &mut HashMap<SocketAddr, VecDeque<Arc<Snapshot>>>,
    now: Instant,
    retention: Duration,
) {
    let Some(cutoff) = now.checked_sub(retention) else {
        return;
    };
    rings.retain(|_, ring| {
        while ring.len() > 1 && ring[1].at <= cutoff {
            ring.pop_front();
        }
        ring.back().is_some_and(|newest| newest.at > cutoff)
    });
}

/// Sums, over proxies, what each counted for `path` between its newest snapshot and its
/// oldest one taken at or after `start` (`None`: its oldest). The
/// increase is added up scrape by scrape, so a proxy restart in between loses nothing but the
/// requests between its last scrape and the restart (as Prometheus's `increase` does).
pub(super) fn window_stats(
    rings: &[Vec<Arc<Snapshot>>],
    path: &PathSelector,
    start: Option<Instant>,
) -> PathStats {
    let mut tally = Tally::default();
    for ring in rings {
        // The first snapshot inside the window: the window may come out a scrape interval
        // short, but never reaches back into what came before it (a migration's previous
        // stage, when the window starts at the hold). Nothing inside: no increase.
        let baseline = match start {
            Some(start) => ring
                .iter()
                .position(|snapshot| snapshot.at >= start)
                .unwrap_or(ring.len()),
            None => 0,
        };
        for pair in ring[baseline..].windows(2) {
            add_increase(&mut tally, &pair[0].samples, &pair[1].samples, path);
        }
    }
    tally.finish()
}

/// Adds each of `path`'s series' increase from `before` to `after`; a series that went down
/// (the proxy restarted) or is new counts its whole current value.
fn add_increase(tally: &mut Tally, before: &Samples, after: &Samples, path: &PathSelector) {
    for (id, sample) in after {
        if !path.matches(&sample.destination_service, &sample.destination_version) {
            continue;
        }
        let increase = match before.get(id) {
            Some(old) if old.value <= sample.value => sample.value - old.value,
            _ => sample.value,
        };
        if !increase.is_finite() {
            continue;
        }
        match sample.kind {
            Kind::Requests => {
                tally.requests += increase;
                if sample.error {
                    tally.errors += increase;
                }
            }
            Kind::Bucket { le } => *tally.buckets.entry(le.to_bits()).or_default() += increase,
        }
    }
}

/// An error and its sources, for hyper's terse top-level messages.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
