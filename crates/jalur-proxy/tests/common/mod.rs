//! Shared by the proxy's integration tests: a control plane on a temp config dir, and jalur
//! sidecars on loopback.

#![allow(dead_code)]

pub mod authz;
pub mod ca;
pub mod mesh;
pub mod probe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jalur_control::{ControlPlane, Options};
use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::{assert_eventually, http_get};

pub struct Plane {
    /// None while stopped.
    pub plane: Option<ControlPlane>,
    pub xds: SocketAddr,
    pub dir: PathBuf,
    /// Owns `dir`: removed when the plane is dropped.
    _tmp: tempfile::TempDir,
    /// Options of every (re)start; `config` and `xds_addr` are filled in.
    pub template: Options,
}

impl Plane {
    pub async fn start(files: &[(&str, String)]) -> Plane {
        Plane::start_with(files, Plane::options()).await
    }

    /// Test defaults: loopback, OS-chosen ports, short debounce and polling, no grace.
    pub fn options() -> Options {
        Options {
            status_addr: ([127, 0, 0, 1], 0).into(),
            debounce: Duration::from_millis(20),
            registry_grace: Duration::ZERO,
            watch_interval: Duration::from_millis(50),
            ..Options::default()
        }
    }

    pub async fn start_with(files: &[(&str, String)], template: Options) -> Plane {
        let tmp = tempfile::TempDir::with_prefix("jalur-proxy-test-").expect("temp dir");
        let dir = tmp.path().to_path_buf();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write config");
        }
        let plane = Plane::launch(&template, dir.clone(), ([127, 0, 0, 1], 0).into()).await;
        Plane {
            xds: plane.xds_addr,
            plane: Some(plane),
            dir,
            _tmp: tmp,
            template,
        }
    }

    pub fn control(&self) -> &ControlPlane {
        self.plane.as_ref().expect("control plane running")
    }

    /// Kills the control plane (its xDS streams end).
    pub async fn stop(&mut self) {
        if let Some(p) = self.plane.take() {
            p.stop().await;
        }
    }

    /// Starts it again on the same xDS address and config directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.plane = Some(Plane::launch(&self.template, self.dir.clone(), self.xds).await);
    }

    /// A control plane on a given xDS address (to restart one where proxies expect it).
    async fn launch(template: &Options, dir: PathBuf, xds: SocketAddr) -> ControlPlane {
        let opts = Options {
            config: vec![dir],
            xds_addr: xds,
            ..template.clone()
        };
        ControlPlane::start(opts).await.expect("control plane")
    }

    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.dir.join(name)).expect("rename");
    }
}

/// Options for a jalur sidecar on loopback with OS-chosen ports everywhere.
pub fn sidecar_opts(xds: SocketAddr, service: &str, namespace: &str) -> ProxyOptions {
    ProxyOptions::loopback(xds, service, namespace)
}

/// Waits until `proxy` has bound its listener `name`; its address (port 0 resolved).
pub async fn bound_listener(proxy: &Proxy, name: &str) -> SocketAddr {
    assert_eventually(
        &format!("jalur proxy binds its listener {name}"),
        Duration::from_secs(20),
        || async {
            proxy
                .listeners()
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| a)
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await
}

/// Starts a jalur sidecar and waits until its outbound listener answers; returns it with the
/// outbound address.
pub async fn jalur_sidecar(opts: ProxyOptions) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(opts).await.expect("jalur proxy starts");
    let outbound = bound_listener(&proxy, "outbound").await;
    wait_accepts(outbound).await;
    (proxy, outbound)
}

/// Waits until `addr` answers HTTP at all: a listener bound on port 0 shows up before it accepts
/// (it warms until its routes arrive).
pub async fn wait_accepts(addr: SocketAddr) {
    assert_eventually("the listener accepts", Duration::from_secs(20), || async {
        http_get(addr, "warmup.invalid", "/", &[]).await.map(|_| ())
    })
    .await;
}

/// A stock Envoy sidecar for `workload` in `namespace` (Istio's node id), on loopback with
/// OS-chosen ports, and its outbound address; `None` when Envoy is not installed (and not CI).
pub async fn envoy_sidecar(
    xds: SocketAddr,
    workload: &str,
    namespace: &str,
) -> Option<(jalur_testkit::Envoy, SocketAddr)> {
    let binary = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary())?;
    let id = format!("sidecar~127.0.0.1~{workload}.{namespace}~{namespace}.svc.cluster.local");
    let mut opts = jalur_testkit::EnvoyOpts::new(xds, &id);
    opts.metadata = serde_json::json!({ "JALUR_EPHEMERAL_PORTS": "true", "JALUR_LISTEN_ADDRESS": "127.0.0.1", "NAMESPACE": namespace });
    let envoy = jalur_testkit::Envoy::start_with(&binary, opts)
        .await
        .expect("envoy starts");
    let port = envoy
        .listener_port("outbound")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
    let outbound = SocketAddr::from(([127, 0, 0, 1], port));
    wait_accepts(outbound).await;
    Some((envoy, outbound))
}

/// The listener a gateway binds for Gateway port 8080 (on an OS-chosen port).
pub const GATEWAY_LISTENER: &str = "0.0.0.0_8080";

/// A jalur gateway selected by `istio: ingressgateway`, in `namespace`, and the address of its
/// listener for Gateway port 8080.
pub async fn jalur_gateway(xds: SocketAddr, namespace: &str) -> (Proxy, SocketAddr) {
    let opts = ProxyOptions {
        role: jalur_proxy::run::Role::Gateway,
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ephemeral_ports: true,
        ..sidecar_opts(xds, "edge-gateway", namespace)
    };
    let proxy = Proxy::start(opts).await.expect("jalur gateway");
    let addr = bound_listener(&proxy, GATEWAY_LISTENER).await;
    (proxy, addr)
}

/// A stock Envoy gateway (Istio's `router~` node id) selected by `istio: ingressgateway`, in
/// `namespace`, and the address of its listener for Gateway port 8080; `None` when Envoy is
/// not installed (and not CI).
/// A stock Envoy gateway (no mesh identity) and the SDS socket serving it the file secrets a
/// Gateway's TLS names (`file-cert:`/`file-root:`), as `jalur agent` would. Derefs to the Envoy.
pub struct EnvoyGateway {
    // Envoy first: it goes before the socket it reads from.
    pub envoy: jalur_testkit::Envoy,
    _sds: jalur_agent::SdsSocket,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for EnvoyGateway {
    type Target = jalur_testkit::Envoy;

    fn deref(&self) -> &jalur_testkit::Envoy {
        &self.envoy
    }
}

pub async fn envoy_gateway(xds: SocketAddr, namespace: &str) -> Option<(EnvoyGateway, SocketAddr)> {
    let binary = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary())?;
    let dir = tempfile::TempDir::with_prefix("jalur-gw-sds-").expect("tmp");
    let socket = dir.path().join("sds.sock");
    let sds = jalur_agent::SdsSocket::bind_files_only(&socket)
        .await
        .expect("file SDS socket");
    let mut opts = jalur_testkit::EnvoyOpts::new(
        xds,
        &format!("router~127.0.0.1~edge-gw.{namespace}~{namespace}.svc.cluster.local"),
    );
    opts.metadata = serde_json::json!({ "LABELS": { "istio": "ingressgateway" }, "NAMESPACE": namespace, "JALUR_EPHEMERAL_PORTS": "true", "JALUR_LISTEN_ADDRESS": "127.0.0.1" });
    opts.extra_clusters = vec![jalur_agent::bootstrap::sds_cluster(&socket)];
    let envoy = jalur_testkit::Envoy::start_with(&binary, opts)
        .await
        .expect("envoy gateway");
    let port = envoy
        .listener_port(GATEWAY_LISTENER)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
    let gateway = EnvoyGateway {
        envoy,
        _sds: sds,
        _dir: dir,
    };
    Some((gateway, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// A loopback port nothing listens on now, for a peer that must be told its port before it
/// binds (Envoy's bootstrap, whose inbound port is also the endpoint it registers). Picked
/// below the kernel's ephemeral range, so no `bind(0)` and no outgoing connection — of this
/// test or any other process — can take it between the pick and the peer's bind (seen: 2 in
/// 40 runs of `mtls_envoy` lost their Envoy's outbound port that way); at random within the
/// rest, so tests picking in parallel rarely collide.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FLOOR: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(FLOOR);
    for _ in 0..span.min(200) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(span);
        let port = FLOOR + (h.finish() % u64::from(span)) as u32;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // No room below the ephemeral range (an unusual kernel setting): any free port.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until the kernel keeps both ends of the xDS connection(s) to `xds_port` alive by TCP
/// keepalive (the server's accepted socket and the proxy's dialed one), as `ss` shows them;
/// panics naming what it saw otherwise. `None` when `ss` is missing (and not CI).
pub async fn assert_xds_kept_alive_by_tcp(xds_port: u16) {
    let Some(ss) = jalur_testkit::require_peer("ss", jalur_testkit::sockets::ss_binary()) else {
        return;
    };
    assert_eventually(
        "both ends of the xDS connection run a TCP keepalive timer",
        Duration::from_secs(10),
        || async {
            let conns = jalur_testkit::sockets::established(&ss, xds_port)?;
            let server = conns.iter().find(|c| c.local.port() == xds_port);
            let client = conns.iter().find(|c| c.peer.port() == xds_port);
            match (server, client) {
                (Some(s), Some(c)) if s.keepalive && c.keepalive => Ok(()),
                _ => Err(format!("connections on port {xds_port}: {conns:?}")),
            }
        },
    )
    .await;
}
