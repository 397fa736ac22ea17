//! RBAC counters under Envoy's own stat names (`http.<hcm prefix>.rbac.allowed`,
//! `<stat_prefix>.rbac.denied`, …), so dashboards and alerts written for Envoy's RBAC read jalur
//! proxy unchanged. Envoy's Prometheus output turns a name into a metric and labels with its
//! default tag extractors; [`prometheus_name`] applies the ones that fire on RBAC names, which
//! `tests/rbac.rs` compares with a stock Envoy's `/stats/prometheus`.
//!
//! Hand-written rather than in the `prometheus-client` registry: that crate adds `_total` to
//! counters and cannot reproduce Envoy's names.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// One counter, shared by every filter that has the same Envoy name (as Envoy's stats are).
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters by Envoy stat name. Looked up when a listener is compiled, never per request.
#[derive(Debug, Default)]
pub struct EnvoyCounters {
    by_name: Mutex<BTreeMap<String, Counter>>,
}

impl EnvoyCounters {
    pub fn counter(&self, name: &str) -> Counter {
        let mut map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// The value of a counter, by Envoy name (0 when it does not exist).
    pub fn value(&self, name: &str) -> u64 {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).map_or(0, Counter::get)
    }

    /// Prometheus text, one `# TYPE` per metric name, as Envoy's `/stats/prometheus`.
    pub fn prometheus(&self) -> String {
        let map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let mut grouped: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for (name, c) in map.iter() {
            let (metric, labels) = prometheus_name(name);
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            grouped
                .entry(metric)
                .or_default()
                .push((labels.join(","), c.get()));
        }
        let mut out = String::new();
        for (metric, series) in grouped {
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (labels, value) in series {
                let _ = writeln!(out, "{metric}{{{labels}}} {value}");
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Envoy's default tag extractors that fire on RBAC stat names, in the order Envoy lists the
/// tags: (tag, regex whose group 1 is cut from the name and group 2 is the value).
fn extractors() -> &'static [(&'static str, regex::Regex)] {
    static EXTRACTORS: OnceLock<Vec<(&'static str, regex::Regex)>> = OnceLock::new();
    EXTRACTORS.get_or_init(|| {
        [
            // http.<hcm prefix>.rbac.(<rules_stat_prefix>.)<stat>
            ("envoy_rbac_http_prefix", r"^http\.[^.]+\.rbac\.(([^.]+)\.)"),
            // (<stat_prefix>.)rbac.<stat> — the network filter
            ("envoy_rbac_prefix", r"^(([^.]+)\.)rbac\."),
            // http.(<hcm prefix>.)…
            ("envoy_http_conn_manager_prefix", r"^http\.(([^.]+)\.)"),
            // tcp.(<prefix>.)<stat>
            ("envoy_tcp_prefix", r"^tcp\.(([^.]+)\.)\w+$"),
        ]
        .into_iter()
        .filter_map(|(tag, re)| Some((tag, regex::Regex::new(re).ok()?)))
        .collect()
    })
}

/// An Envoy stat name as Envoy's Prometheus output shows it: every extractor matches the
/// original name, the spans they capture are cut out, the rest becomes `envoy_` + the name
/// with every character outside `[a-zA-Z0-9_]` turned into `_`.
pub fn prometheus_name(name: &str) -> (String, Vec<(&'static str, String)>) {
    let mut cut = vec![false; name.len()];
    let mut labels = Vec::new();
    for (tag, re) in extractors() {
        let Some(c) = re.captures(name) else { continue };
        let (Some(span), Some(value)) = (c.get(1), c.get(2)) else {
            continue;
        };
        cut[span.start()..span.end()]
            .iter_mut()
            .for_each(|b| *b = true);
        labels.push((*tag, value.as_str().to_string()));
    }
    let mut metric = String::from("envoy_");
    for (i, ch) in name.char_indices() {
        if cut[i] {
            continue;
        }
        metric.push(if ch.is_ascii_alphanumeric() || ch == '_' {
            ch
        } else {
            '_'
        });
    }
    (metric, labels)
}

/// Envoy's stats scope for a prefix: joined with a `.`, a trailing `.` not doubled.
pub fn scoped(prefix: &str, rest: &str) -> String {
    let prefix = prefix.trim_end_matches('.');
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}.{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case was read off a stock Envoy 1.40's `/stats/prometheus`.
    #[test]
    fn names_as_envoy_prints_them() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: [Case; 6] = [
            (
                "http.inbound_8080.rbac.allowed",
                "envoy_http_rbac_allowed",
                &[("envoy_http_conn_manager_prefix", "inbound_8080")],
            ),
            (
                "http.inbound_8080.rbac.pfx_.denied",
                "envoy_http_rbac_denied",
                &[
                    ("envoy_rbac_http_prefix", "pfx_"),
                    ("envoy_http_conn_manager_prefix", "inbound_8080"),
                ],
            ),
            (
                "http.inbound_0.0.0.0_8080.rbac.allowed",
                "envoy_http_0_0_0_8080_rbac_allowed",
                &[("envoy_http_conn_manager_prefix", "inbound_0")],
            ),
            (
                "tcp.rbac.denied",
                "envoy_denied",
                &[("envoy_rbac_prefix", "tcp"), ("envoy_tcp_prefix", "rbac")],
            ),
            (
                "tcpin.rbac.shh_.shadow_allowed",
                "envoy_rbac_shh__shadow_allowed",
                &[("envoy_rbac_prefix", "tcpin")],
            ),
            ("foo.bar.rbac.allowed", "envoy_foo_bar_rbac_allowed", &[]),
        ];
        for (name, metric, labels) in cases {
            let (m, l) = prometheus_name(name);
            assert_eq!(m, metric, "{name}");
            let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(l, labels, "{name}");
        }
        assert_eq!(scoped("tcp.", "rbac.allowed"), "tcp.rbac.allowed");
        assert_eq!(scoped("tcpin", "rbac.allowed"), "tcpin.rbac.allowed");
    }
}
