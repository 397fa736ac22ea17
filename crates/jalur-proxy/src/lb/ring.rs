//! The consistent-hash balancers, built as Envoy builds them so both proxies map a key to the
//! same endpoint: a ketama ring of `"{addr}_{i}"` xxHash64 points, and a Maglev table populated
//! by weight from offsets and skips hashed from the address. Built once per host set.

use std::io::Write;
use std::sync::Arc;

use super::{scan, Host};
use xxhash_rust::xxh64::xxh64;

/// Host weights normalized to sum 1, with the smallest and largest.
fn normalized(hosts: &[Arc<Host>]) -> (Vec<f64>, f64, f64) {
    let total: f64 = hosts.iter().map(|h| f64::from(h.weight)).sum();
    let weights: Vec<f64> = hosts.iter().map(|h| f64::from(h.weight) / total).collect();
    let min = weights.iter().copied().fold(f64::INFINITY, f64::min);
    let max = weights.iter().copied().fold(0.0, f64::max);
    (weights, min, max)
}

/// A host's key: its address as Envoy prints it (`10.0.0.1:8080`, `[::1]:80`).
fn key(host: &Host, buf: &mut Vec<u8>) {
    buf.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(buf, "{}", host.addr);
}

pub(super) struct Ring {
    /// (point, index into the healthy hosts), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub(super) fn new(hosts: &[Arc<Host>], min_size: u64, max_size: u64) -> Ring {
        if hosts.is_empty() {
            return Ring { points: Vec::new() };
        }
        let (weights, min_weight, _) = normalized(hosts);
        // Scale so the lightest host gets a whole number of points, within the maximum size.
        let scale = ((min_weight * min_size as f64).ceil() / min_weight).min(max_size as f64);
        let mut points = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        let mut buf = Vec::with_capacity(64);
        for (index, (host, weight)) in hosts.iter().zip(&weights).enumerate() {
            key(host, &mut buf);
            buf.push(b'_');
            let base = buf.len();
            target += scale * weight;
            let mut i = 0u64;
            while current < target {
                buf.truncate(base);
                let _ = write!(buf, "{i}");
                points.push((xxh64(&buf, 0), index as u32));
                i += 1;
                current += 1.0;
            }
        }
        points.sort_unstable_by_key(|&(point, _)| point);
        Ring { points }
    }

    /// The host owning the first point at or after `hash`, walking on past skipped hosts.
    pub(super) fn pick<'a>(
        &self,
        hosts: &'a [Arc<Host>],
        hash: u64,
        ok: &dyn Fn(&Host) -> bool,
    ) -> Option<&'a Arc<Host>> {
        let len = self.points.len();
        let start = self.points.partition_point(|&(point, _)| point < hash);
        (0..len)
            .map(|k| &hosts[self.points[(start + k) % len].1 as usize])
            .find(|h| ok(h))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.points.len()
    }
}

pub(super) struct Maglev {
    /// Index into the healthy hosts per slot; the size is prime.
    table: Vec<u32>,
}

/// Alternative slots tried for a skipped host before scanning the hosts in order.
const MAGLEV_ATTEMPTS: u64 = 8;

impl Maglev {
    pub(super) fn new(hosts: &[Arc<Host>], size: u64) -> Maglev {
        if hosts.is_empty() {
            return Maglev { table: Vec::new() };
        }
        let (weights, _, max_weight) = normalized(hosts);
        let mut buf = Vec::with_capacity(64);
        // Sorted by key: the table must not depend on EDS order.
        let mut entries: Vec<Entry> = hosts
            .iter()
            .zip(&weights)
            .enumerate()
            .map(|(index, (host, &weight))| {
                key(host, &mut buf);
                Entry {
                    key: buf.clone(),
                    index: index as u32,
                    offset: xxh64(&buf, 0) % size,
                    skip: xxh64(&buf, 1) % (size - 1) + 1,
                    weight,
                    target: 0.0,
                    next: 0,
                }
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < size {
            for entry in &mut entries {
                if filled == size {
                    break;
                }
                // A host of the largest weight takes a slot every iteration, one of a third of
                // it every third iteration.
                if (iteration as f64) * entry.weight < entry.target {
                    continue;
                }
                entry.target += max_weight;
                let mut slot = entry.permutation(size);
                while table[slot] != u32::MAX {
                    entry.next += 1;
                    slot = entry.permutation(size);
                }
                table[slot] = entry.index;
                entry.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Maglev { table }
    }

    pub(super) fn pick<'a>(
        &self,
        hosts: &'a [Arc<Host>],
        hash: u64,
        ok: &dyn Fn(&Host) -> bool,
    ) -> Option<&'a Arc<Host>> {
        let size = self.table.len() as u64;
        let host = |h: u64| &hosts[self.table[(h % size) as usize] as usize];
        // Envoy's retry rehash: xor with a value with most bits set, different per attempt.
        (0..MAGLEV_ATTEMPTS)
            .map(|attempt| {
                host(if attempt == 0 {
                    hash
                } else {
                    hash ^ attempt.wrapping_neg()
                })
            })
            .find(|h| ok(h))
            .or_else(|| scan(hosts, (hash % hosts.len() as u64) as usize, ok))
    }
}

struct Entry {
    key: Vec<u8>,
    index: u32,
    offset: u64,
    skip: u64,
    weight: f64,
    target: f64,
    next: u64,
}

impl Entry {
    fn permutation(&self, size: u64) -> usize {
        ((self.offset + self.skip * self.next) % size) as usize
    }
}
