//! Readable transport sockets: which SDS secrets a TLS context names, what it checks of the peer
//! (SAN matchers), ALPN and SNI. Never key material (jalur emits none inline; SDS carries it).

use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CommonTlsContext, DownstreamTlsContext,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use serde_json::{json, Map, Value};

use super::{decode, network_filter, prune};

pub(super) fn struct_json(s: &Struct) -> Value {
    let m: Map<String, Value> = s
        .fields
        .iter()
        .map(|(k, v)| {
            let v = match &v.kind {
                Some(Kind::StringValue(s)) => json!(s),
                Some(Kind::BoolValue(b)) => json!(b),
                Some(Kind::NumberValue(n)) => json!(n),
                Some(Kind::StructValue(s)) => struct_json(s),
                _ => Value::Null,
            };
            (k.clone(), v)
        })
        .collect();
    Value::Object(m)
}

pub(super) fn socket(t: Option<&TransportSocket>) -> Value {
    let Some(t) = t else { return Value::Null };
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &t.config_type else {
        return json!(t.name);
    };
    if let Some(up) = decode::<UpstreamTlsContext>(any) {
        let mut v = common(up.common_tls_context.as_ref());
        v["sni"] = json!(up.sni);
        return json!({ "upstream_tls": prune(v) });
    }
    if let Some(down) = decode::<DownstreamTlsContext>(any) {
        let mut v = common(down.common_tls_context.as_ref());
        v["require_client_certificate"] =
            json!(down.require_client_certificate.is_some_and(|b| b.value));
        return json!({ "downstream_tls": prune(v) });
    }
    json!(t.name)
}

fn common(c: Option<&CommonTlsContext>) -> Value {
    let Some(c) = c else { return json!({}) };
    let certs: Vec<&str> = c
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let inline = !c.tls_certificates.is_empty();
    let (sans, validation_sds) = match &c.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let mut sans: Vec<Value> = cv
                .default_validation_context
                .iter()
                .flat_map(|d| d.match_typed_subject_alt_names.iter())
                .map(
                    |m| match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                        Some(MatchPattern::Exact(s)) => json!({ "uri_exact": s }),
                        Some(MatchPattern::Prefix(s)) => json!({ "uri_prefix": s }),
                        _ => Value::Null,
                    },
                )
                .collect();
            // Istio's shape for a gateway's `subjectAltNames`: exact, any SAN type.
            #[allow(deprecated)]
            sans.extend(
                cv.default_validation_context
                    .iter()
                    .flat_map(|d| d.match_subject_alt_names.iter())
                    .map(|m| match m.match_pattern.as_ref() {
                        Some(MatchPattern::Exact(s)) => json!({ "any_exact": s }),
                        _ => Value::Null,
                    }),
            );
            let sds = cv
                .validation_context_sds_secret_config
                .as_ref()
                .map(|s| s.name.clone());
            (sans, sds)
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            (Vec::new(), Some(s.name.clone()))
        }
        _ => (Vec::new(), None),
    };
    prune(json!({
        "certificate_sds": certs, "inline_certificates": inline, "validation_sds": validation_sds,
        "match_sans": sans, "alpn": c.alpn_protocols,
    }))
}

pub(super) fn chain(fc: &FilterChain) -> Value {
    let filters: Vec<Value> = fc
        .filters
        .iter()
        .map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => network_filter(any),
            _ => json!(f.name),
        })
        .collect();
    let protocol = fc
        .filter_chain_match
        .as_ref()
        .map(|m| m.transport_protocol.clone())
        .filter(|p| !p.is_empty());
    let server_names = fc.filter_chain_match.as_ref().map(|m| &m.server_names);
    prune(json!({
        "server_names": server_names,
        "transport_protocol": protocol,
        "transport_socket": socket(fc.transport_socket.as_ref()),
        "filters": filters,
    }))
}
