//! The bootstrap `jalur agent --envoy-bootstrap FILE` writes for the Envoy beside it: the node
//! (Istio's metadata, through [`NodeMeta`]), admin on loopback, ADS to the control plane, and two
//! static clusters in Istio's names:
//! - `sds-grpc`: HTTP/2 over the agent's Unix socket, where `default` and `ROOTCA` come from;
//! - `xds-grpc`: the control plane's TLS port (15012), mTLS with those two secrets, the server
//!   accepted only if its certificate names the control plane's SPIFFE id.
//!
//! Envoy reads a file whose name does not end in `.yaml`/`.pb` as JSON; JSON is what is written.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use jalur_identity::SpiffeId;
use jalur_wire::NodeMeta;
use serde_json::{json, Map, Value};

use crate::sds::{DEFAULT, ROOTCA};
use crate::AgentError;

/// The label a workload with mesh credentials carries, so the control plane sends mTLS to it.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Its value (Istio's).
pub const TLS_MODE_ISTIO: &str = "istio";
/// The static cluster names (Istio's, so Istio-shaped xDS from the control plane resolves).
pub const SDS_CLUSTER: &str = "sds-grpc";
pub const XDS_CLUSTER: &str = "xds-grpc";
/// The control plane's SPIFFE id (`spiffe://TD/ns/ROOT_NS/sa/jalur-control`), as the
/// rotator and jalur proxy name it.
pub use jalur_identity::channel::control_plane_id;

/// Where Envoy's ADS goes: the control plane's TLS port and the id its certificate must name.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub host: String,
    pub port: u16,
    pub id: SpiffeId,
}

impl ControlPlane {
    /// From `https://HOST:PORT` (the agent's `--xds-address`); `HOST` may be a name or an IP.
    pub fn from_url(url: &str, id: SpiffeId) -> Result<ControlPlane, String> {
        let rest = url.strip_prefix("https://").ok_or_else(|| {
            format!("--xds-address {url:?}: must be https://HOST:PORT (Envoy's ADS runs over mTLS)")
        })?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("--xds-address {url:?}: no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .map_err(|_| format!("--xds-address {url:?}: {port:?} is not a port"))?;
        if host.is_empty() || port == 0 {
            return Err(format!("--xds-address {url:?}: expected https://HOST:PORT"));
        }
        Ok(ControlPlane {
            host: host.to_string(),
            port,
            id,
        })
    }

    pub fn from_addr(addr: SocketAddr, id: SpiffeId) -> ControlPlane {
        ControlPlane {
            host: addr.ip().to_string(),
            port: addr.port(),
            id,
        }
    }
}

/// Everything the bootstrap says.
#[derive(Debug, Clone)]
pub struct EnvoyBootstrap {
    pub node_id: String,
    pub cluster: String,
    /// Node metadata; [`EnvoyBootstrap::new`] fills NAMESPACE, SERVICE_ACCOUNT and the tlsMode
    /// label from the identity, callers add ports, service, labels.
    pub meta: NodeMeta,
    pub sds_socket: PathBuf,
    pub control_plane: ControlPlane,
    /// `DELTA_GRPC` instead of `GRPC` for ADS.
    pub delta: bool,
    /// Envoy's admin listener; loopback only (it can dump config and quit Envoy).
    pub admin: SocketAddr,
}

impl EnvoyBootstrap {
    /// A bootstrap for the workload `id`, announcing it as mTLS-capable.
    pub fn new(
        id: &SpiffeId,
        node_id: impl Into<String>,
        sds_socket: impl Into<PathBuf>,
        control_plane: ControlPlane,
    ) -> EnvoyBootstrap {
        let mut meta = NodeMeta {
            namespace: Some(id.namespace.clone()),
            service_account: Some(id.service_account.clone()),
            ..NodeMeta::default()
        };
        meta.labels
            .insert(TLS_MODE_LABEL.to_string(), TLS_MODE_ISTIO.to_string());
        EnvoyBootstrap {
            node_id: node_id.into(),
            cluster: format!("{}.{}", id.service_account, id.namespace),
            meta,
            sds_socket: sds_socket.into(),
            control_plane,
            delta: false,
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
        }
    }

    pub fn to_json(&self) -> Value {
        let api_type = if self.delta { "DELTA_GRPC" } else { "GRPC" };
        let over_ads = json!({ "ads": {}, "resource_api_version": "V3" });
        json!({
            "node": {
                "id": self.node_id,
                "cluster": self.cluster,
                "metadata": struct_to_json(&self.meta.to_struct()),
            },
            "admin": { "address": socket_address(self.admin.ip(), self.admin.port()) },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": api_type,
                    "transport_api_version": "V3",
                    "grpc_services": [{
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            "retry_policy": {
                                "retry_back_off": { "base_interval": "0.1s", "max_interval": "2s" }
                            }
                        }
                    }]
                },
                "cds_config": over_ads,
                "lds_config": over_ads,
            },
            "static_resources": { "clusters": [self.sds_cluster(), self.xds_cluster()] }
        })
    }

    fn sds_cluster(&self) -> Value {
        sds_cluster(&self.sds_socket)
    }

    fn xds_cluster(&self) -> Value {
        let cp = &self.control_plane;
        let ip = cp.host.parse::<IpAddr>().ok();
        let address = match ip {
            Some(ip) => socket_address(ip, cp.port),
            None => json!({ "socket_address": { "address": cp.host, "port_value": cp.port } }),
        };
        let mut tls = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [sds_secret_config(DEFAULT)],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{
                            "san_type": "URI",
                            "matcher": { "exact": cp.id.to_string() }
                        }]
                    },
                    "validation_context_sds_secret_config": sds_secret_config(ROOTCA),
                }
            }
        });
        if ip.is_none() {
            tls["sni"] = json!(cp.host);
        }
        json!({
            "name": XDS_CLUSTER,
            // A name is resolved (and re-resolved) by Envoy; an IP needs no DNS.
            "type": if ip.is_some() { "STATIC" } else { "STRICT_DNS" },
            "dns_lookup_family": "V4_PREFERRED",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": XDS_CLUSTER,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": address } }] }]
            },
            "typed_extension_protocol_options": http2_options(),
            "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": tls },
        })
    }

    /// Writes the bootstrap as JSON, atomically (a temp file renamed into place), so an Envoy
    /// started as soon as the file appears never reads half of it.
    pub fn write(&self, path: &Path) -> Result<(), AgentError> {
        let err = |reason: String| AgentError::Bootstrap {
            path: path.display().to_string(),
            reason,
        };
        let text = serde_json::to_string_pretty(&self.to_json()).map_err(|e| err(e.to_string()))?;
        let name = path
            .file_name()
            .ok_or_else(|| err("has no file name".into()))?;
        let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                err(e.to_string())
            })
    }
}

/// The static cluster `sds-grpc`: HTTP/2 over the SDS Unix socket at `socket`. Also for an
/// Envoy bootstrap written elsewhere (a gateway serving only file secrets).
pub fn sds_cluster(socket: &Path) -> Value {
    json!({
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "pipe": { "path": socket.display().to_string() }
            } } }] }]
        },
        "typed_extension_protocol_options": http2_options(),
    })
}

/// Istio's SDS secret config: GRPC to `sds-grpc`, the node on the first message only. The
/// initial fetch never times out: a TLS context without its certificate is useless, and the
/// agent answers as soon as it holds one.
fn sds_secret_config(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "initial_fetch_timeout": "0s",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": SDS_CLUSTER } }]
            }
        }
    })
}

fn http2_options() -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    })
}

fn socket_address(ip: IpAddr, port: u16) -> Value {
    json!({ "socket_address": { "address": ip.to_string(), "port_value": port } })
}

/// A protobuf `Struct` (what `NodeMeta` writes) as the JSON Envoy's bootstrap holds.
pub fn struct_to_json(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn value_to_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        SpiffeId::new("cluster.local", "shop", "storefront")
    }

    #[test]
    fn the_bootstrap_announces_the_identity_and_points_both_clusters_right() {
        let cp = ControlPlane::from_url(
            "https://jalur-control.jalur-system.svc:15012",
            control_plane_id("cluster.local", "jalur-system"),
        )
        .expect("url");
        let mut b = EnvoyBootstrap::new(
            &id(),
            "sidecar~10.0.0.1~sf-1.shop~shop.svc.cluster.local",
            "/run/jalur/sds.sock",
            cp,
        );
        b.delta = true;
        b.meta.service = Some("storefront".into());
        let j = b.to_json();
        let md = &j["node"]["metadata"];
        assert_eq!(md["NAMESPACE"], "shop");
        assert_eq!(md["SERVICE_ACCOUNT"], "storefront");
        assert_eq!(md["JALUR_SERVICE"], "storefront");
        assert_eq!(md["LABELS"][TLS_MODE_LABEL], "istio");
        assert_eq!(
            j["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        let clusters = j["static_resources"]["clusters"]
            .as_array()
            .expect("clusters");
        let sds = &clusters[0];
        assert_eq!(sds["name"], SDS_CLUSTER);
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["pipe"]["path"],
            "/run/jalur/sds.sock"
        );
        let xds = &clusters[1];
        assert_eq!(xds["type"], "STRICT_DNS");
        let tls = &xds["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "jalur-control.jalur-system.svc");
        let common = &tls["common_tls_context"];
        assert_eq!(
            common["tls_certificate_sds_secret_configs"][0]["name"],
            "default"
        );
        let combined = &common["combined_validation_context"];
        assert_eq!(
            combined["validation_context_sds_secret_config"]["name"],
            "ROOTCA"
        );
        assert_eq!(
            combined["default_validation_context"]["match_typed_subject_alt_names"][0]["matcher"]
                ["exact"],
            "spiffe://cluster.local/ns/jalur-system/sa/jalur-control"
        );
    }

    #[test]
    fn control_plane_urls_must_be_https_with_a_port() {
        let id = control_plane_id("cluster.local", "jalur-system");
        let ok = ControlPlane::from_url("https://127.0.0.1:15012", id.clone()).expect("ip");
        assert_eq!((ok.host.as_str(), ok.port), ("127.0.0.1", 15012));
        let v6 = ControlPlane::from_url("https://[::1]:15012/", id.clone()).expect("v6");
        assert_eq!(v6.host, "::1");
        for bad in [
            "http://cp:15010",
            "https://cp",
            "https://cp:x",
            "https://:15012",
        ] {
            assert!(
                ControlPlane::from_url(bad, id.clone()).is_err(),
                "{bad} accepted"
            );
        }
    }
}
