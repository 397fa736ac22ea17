//! Listeners whose filter chains are told apart by `filter_chain_match.server_names` (a gateway's
//! PASSTHROUGH server): each chain a TCP proxy that does not terminate TLS. Terminating TLS per
//! SNI, or matching on anything beside the names, is refused rather than half honoured.

use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, Listener as XdsListener};

use super::listener::filter_chain;
use super::{reject_if, At, Invalid, Res};
use crate::config::{ListenerKind, SniChain, SniRoutes};
use crate::rbac::RbacFilter;

/// Whether some filter chain of `l` matches on server names.
pub(super) fn by_server_name(l: &XdsListener) -> bool {
    l.filter_chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.server_names.is_empty())
    })
}

/// The chains of a listener routing by SNI, and their network RBAC filters. Envoy refuses two
/// chains with the same match; so does jalur (a name in two chains, or two chains without
/// names). The chains' RBAC filters must be the same (the control plane emits the gateway port's
/// policies on each): jalur proxy runs one set per listener, after reading the SNI.
pub(super) fn routes(l: &XdsListener) -> Res<(SniRoutes, Vec<RbacFilter>)> {
    let all = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c, format!("filter_chains[{i}]")))
        .chain(
            l.default_filter_chain
                .as_ref()
                .map(|c| (c, "default_filter_chain".to_string())),
        );
    let mut chains: Vec<(SniChain, String)> = Vec::new();
    let mut rbac: Option<(Vec<RbacFilter>, String)> = None;
    for (chain, path) in all {
        let server_names = match chain.filter_chain_match.as_ref() {
            Some(m) if path != "default_filter_chain" => {
                names(m).at(format!("{path}.filter_chain_match"))?
            }
            _ => Vec::new(),
        };
        let ((kind, chain_rbac), tls) = filter_chain(chain).at(&path)?;
        match &rbac {
            Some((first, first_path)) if *first != chain_rbac => {
                return Err(Invalid::new(
                    format!("{path}.filters"),
                    format!("network RBAC filters differ from those of {first_path}: jalur proxy runs one set per listener"),
                ))
            }
            Some(_) => {}
            None => rbac = Some((chain_rbac, path.clone())),
        }
        reject_if(
            tls.is_some(),
            &format!("{path}.transport_socket"),
            "a chain matching server_names must pass TLS through: terminating TLS per SNI is not supported",
        )?;
        let ListenerKind::Tcp(tcp) = kind else {
            return Err(Invalid::new(
                format!("{path}.filters[{}]", chain.filters.len().saturating_sub(1)),
                "a chain matching server_names must be a tcp_proxy (TLS passthrough)",
            ));
        };
        for (other, other_path) in &chains {
            let same = if server_names.is_empty() {
                other.server_names.is_empty()
            } else {
                server_names
                    .iter()
                    .find(|n| other.server_names.contains(n))
                    .is_some()
            };
            if same {
                return Err(Invalid::new(
                    format!("{path}.filter_chain_match"),
                    format!("matches the same connections as {other_path}"),
                ));
            }
        }
        chains.push((SniChain { server_names, tcp }, path));
    }
    let routes = SniRoutes {
        chains: chains.into_iter().map(|(c, _)| c).collect(),
    };
    Ok((routes, rbac.map(|(r, _)| r).unwrap_or_default()))
}

/// A chain's server names, lowercase (DNS names compare without case). Only `server_names` may
/// be set: jalur does not match on ports, addresses or ALPN.
fn names(m: &FilterChainMatch) -> Res<Vec<String>> {
    let rest = FilterChainMatch {
        server_names: Vec::new(),
        ..m.clone()
    };
    reject_if(
        rest != FilterChainMatch::default(),
        "",
        "with server_names, no other filter_chain_match field is supported",
    )?;
    let mut out: Vec<String> = Vec::new();
    for (i, name) in m.server_names.iter().enumerate() {
        let wildcard_ok = name.strip_prefix("*.").map_or(!name.contains('*'), |rest| {
            !rest.is_empty() && !rest.contains('*')
        });
        reject_if(
            name.is_empty() || !wildcard_ok,
            &format!("server_names[{i}]"),
            &format!("\"{name}\" is not a server name (a DNS name, or *.suffix)"),
        )?;
        let name = name.to_ascii_lowercase();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        tcp_proxy, TcpProxy,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    use envoy_types::util::pack_any;

    use super::*;

    fn chain(names: &[&str], cluster: &str) -> FilterChain {
        let proxy = TcpProxy {
            stat_prefix: "gw".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
            ..TcpProxy::default()
        };
        FilterChain {
            filter_chain_match: (!names.is_empty()).then(|| FilterChainMatch {
                server_names: names.iter().map(|n| n.to_string()).collect(),
                ..FilterChainMatch::default()
            }),
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
            }],
            ..FilterChain::default()
        }
    }

    fn listener(chains: Vec<FilterChain>) -> XdsListener {
        XdsListener {
            filter_chains: chains,
            ..XdsListener::default()
        }
    }

    #[test]
    fn chains_by_name_keep_their_targets_and_lowercase_names() {
        let l = listener(vec![
            chain(&["A.example.com"], "a"),
            chain(&["*.example.com", "b.example.org"], "b"),
            chain(&[], "rest"),
        ]);
        assert!(by_server_name(&l));
        let (r, _) = routes(&l).expect("valid");
        let got: Vec<(Vec<String>, String)> = r
            .chains
            .iter()
            .map(|c| (c.server_names.clone(), c.tcp.targets[0].cluster.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec!["a.example.com".to_string()], "a".to_string()),
                (
                    vec!["*.example.com".to_string(), "b.example.org".to_string()],
                    "b".to_string()
                ),
                (vec![], "rest".to_string()),
            ]
        );
    }

    #[test]
    fn a_name_in_two_chains_is_refused_like_envoy() {
        let l = listener(vec![
            chain(&["a.example.com"], "a"),
            chain(&["b.example.com", "a.example.com"], "b"),
        ]);
        let e = routes(&l).expect_err("duplicate");
        assert_eq!(e.field, "filter_chains[1].filter_chain_match");
        assert!(e.message.contains("filter_chains[0]"), "{}", e.message);
    }

    #[test]
    fn two_chains_without_names_are_refused() {
        let l = listener(vec![
            chain(&["a.example.com"], "a"),
            chain(&[], "b"),
            chain(&[], "c"),
        ]);
        let e = routes(&l).expect_err("duplicate catch-all");
        assert_eq!(e.field, "filter_chains[2].filter_chain_match");
    }

    #[test]
    fn partial_wildcards_and_other_match_fields_are_refused() {
        let e = routes(&listener(vec![chain(&["w*.example.com"], "a")])).expect_err("wildcard");
        assert_eq!(
            e.field,
            "filter_chains[0].filter_chain_match.server_names[0]"
        );
        let mut c = chain(&["a.example.com"], "a");
        if let Some(m) = c.filter_chain_match.as_mut() {
            m.transport_protocol = "tls".into();
        }
        let e = routes(&listener(vec![c])).expect_err("transport_protocol");
        assert_eq!(e.field, "filter_chains[0].filter_chain_match");
    }

    #[test]
    fn a_chain_terminating_tls_is_refused_not_passed_through() {
        let mut c = chain(&["a.example.com"], "a");
        c.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
                DownstreamTlsContext::default(),
            ))),
        });
        let e = routes(&listener(vec![c])).expect_err("terminating");
        assert!(
            e.field.starts_with("filter_chains[0].transport_socket"),
            "{}",
            e.field
        );
    }
}
