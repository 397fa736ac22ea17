//! PeerAuthentication checks: port-level settings need a selector (Istio refuses them otherwise),
//! valid port numbers, and two policies at one level for the same workloads (Istio then picks
//! the oldest, jalur the first by name: either way one of them is silently ignored).

use crate::diag::codes;
use crate::security::PeerAuthentication;
use crate::{Config, Diagnostic, Resource};

use super::{location, port_number};

pub(super) fn check(
    config: &Config,
    r: &Resource,
    pa: &PeerAuthentication,
    out: &mut Vec<Diagnostic>,
) {
    if !pa.port_level_mtls.is_empty() && pa.match_labels().is_none() {
        let msg = "portLevelMtls applies to the ports of selected workloads only; add selector.matchLabels, or set the namespace's mode in spec.mtls";
        out.push(r.diag(
            codes::PORT_LEVEL_MTLS_WITHOUT_SELECTOR,
            "spec.portLevelMtls",
            msg,
        ));
    }
    for port in pa.port_level_mtls.keys() {
        port_number(r, &format!("spec.portLevelMtls.{port}"), *port, out);
    }
    let earlier = config
        .peer_authentications()
        .take_while(|(other, _)| !std::ptr::eq(*other, r))
        .find(|(other, o)| {
            other.meta.namespace == r.meta.namespace && o.match_labels() == pa.match_labels()
        });
    if let Some((first, _)) = earlier {
        let level = match pa.match_labels() {
            None => "namespace-wide".to_string(),
            Some(l) => format!("selecting {l:?}"),
        };
        let msg = format!(
            "PeerAuthentication {}/{} ({}) is already the {level} policy of namespace {}; only one applies, so this one is ignored; merge them",
            first.meta.namespace,
            first.meta.name,
            location(first),
            r.meta.namespace
        );
        let field = if pa.selector.is_some() {
            "spec.selector"
        } else {
            "metadata"
        };
        out.push(r.diag(codes::CONFLICTING_PEER_AUTHENTICATION, field, msg));
    }
}
