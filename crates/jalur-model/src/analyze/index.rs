//! What the analyzers look things up in: the services the mesh knows (with their ports), the
//! DestinationRules by host, and the Gateways by namespace and name.

use std::collections::{BTreeMap, BTreeSet};

use crate::networking::{DestinationRule, Gateway};
use crate::{host, Config, Resource};

use super::{overlaps, KnownServices};

/// The ports a known host exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ports {
    /// Some source of the host does not say (a ServiceEntry without ports, a registry without
    /// port data): no port check is made.
    Any,
    Only(BTreeSet<u32>),
}

/// A `gateways` entry of a VirtualService, resolved.
#[derive(Debug, Clone, Copy)]
pub(super) enum Bound<'a> {
    Mesh,
    Gateway(&'a Resource, &'a Gateway),
    Missing,
}

pub(super) struct Index<'a> {
    /// Host pattern (qualified, maybe wildcard) -> ports; `None` when not known.
    services: Vec<(String, Option<BTreeSet<u32>>)>,
    /// Qualified DestinationRule host -> the rule.
    rules: Vec<(String, &'a Resource, &'a DestinationRule)>,
    gateways: BTreeMap<(&'a str, &'a str), (&'a Resource, &'a Gateway)>,
}

impl<'a> Index<'a> {
    pub(super) fn build(config: &'a Config, extra: &KnownServices) -> Index<'a> {
        let mut services = Vec::new();
        for (r, se) in config.service_entries() {
            let ports: BTreeSet<u32> = se.ports.iter().map(|p| p.number).collect();
            let ports = (!ports.is_empty()).then_some(ports);
            for h in &se.hosts {
                services.push((host::qualify(h, &r.meta.namespace), ports.clone()));
            }
        }
        for (h, ports) in extra {
            services.push((h.clone(), (!ports.is_empty()).then(|| ports.clone())));
        }
        let rules = config
            .destination_rules()
            .map(|(r, dr)| (host::qualify(&dr.host, &r.meta.namespace), r, dr))
            .collect();
        let gateways = config
            .gateways()
            .map(|(r, gw)| ((r.meta.namespace.as_str(), r.meta.name.as_str()), (r, gw)))
            .collect();
        Index {
            services,
            rules,
            gateways,
        }
    }

    /// The ports of a qualified destination host, or `None` when the mesh does not know it.
    pub(super) fn service(&self, fqdn: &str) -> Option<Ports> {
        let mut found = None;
        for (pattern, ports) in &self.services {
            if !host::matches(pattern, fqdn) {
                continue;
            }
            found = Some(match (found, ports) {
                (Some(Ports::Any), _) | (_, None) => Ports::Any,
                (None, Some(p)) => Ports::Only(p.clone()),
                (Some(Ports::Only(mut acc)), Some(p)) => {
                    acc.extend(p);
                    Ports::Only(acc)
                }
            });
        }
        found
    }

    /// Whether any known service could be the (maybe wildcard) host of a DestinationRule.
    pub(super) fn knows_pattern(&self, fqdn: &str) -> bool {
        self.services
            .iter()
            .any(|(pattern, _)| overlaps(pattern, fqdn))
    }

    /// The DestinationRules that apply to a qualified destination host.
    pub(super) fn rules_for<'s>(
        &'s self,
        fqdn: &'s str,
    ) -> impl Iterator<Item = (&'a Resource, &'a DestinationRule)> + 's {
        self.rules
            .iter()
            .filter(move |(h, ..)| host::matches(h, fqdn))
            .map(|(_, r, dr)| (*r, *dr))
    }

    /// Resolves a `gateways` entry written in a resource of namespace `namespace`.
    pub(super) fn gateway(&self, entry: &str, namespace: &str) -> Bound<'a> {
        if entry == "mesh" {
            return Bound::Mesh;
        }
        let (ns, name) = entry.split_once('/').unwrap_or((namespace, entry));
        match self.gateways.get(&(ns, name)) {
            Some((r, gw)) => Bound::Gateway(r, gw),
            None => Bound::Missing,
        }
    }
}
