//! The demo's fleet: legacy registry, control plane, sample services, sidecars, the fronting
//! proxy and the load aimed at them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use http::Method;
use jalur_control::migrate::{Command, MigrationStatus};
use jalur_control::{ControlPlane, Options};
use jalur_demo::envoy::Envoy;
use jalur_demo::{ConsulDouble, LoadGen, LoadProtocol, LoadSpec, LoadTarget, SampleApp};
use jalur_identity::rotate::{CertRotator, RotatorOptions};
use jalur_identity::SpiffeId;
use jalur_proxy::run::{Proxy, ProxyOptions};
use serde_json::{json, Value};

use super::Args;

const NS: &str = "demo";
const FRONT_ID: &str = "jalur-demo-front";
/// The port mesh callers use for every demo service (each instance keeps its own).
const SERVICE_PORT: u16 = 9080;

/// One demo service: how many legacy (Consul) and meshed instances, how it is called.
struct Svc {
    name: &'static str,
    legacy: usize,
    mesh: usize,
    /// Load targets: protocol and weight; `direct` = legacy callers resolving instances in
    /// Consul themselves (no fronting proxy).
    calls: &'static [(LoadProtocol, u32)],
    direct: bool,
    migrate: bool,
}

const SERVICES: [Svc; 6] = [
    Svc {
        name: "reviews",
        legacy: 2,
        mesh: 2,
        calls: &[(LoadProtocol::Http, 2), (LoadProtocol::Grpc, 2)],
        direct: false,
        migrate: true,
    },
    Svc {
        name: "ratings",
        legacy: 2,
        mesh: 2,
        calls: &[(LoadProtocol::Grpc, 2)],
        direct: false,
        migrate: true,
    },
    Svc {
        name: "payments",
        legacy: 2,
        mesh: 2,
        calls: &[(LoadProtocol::Http, 2)],
        direct: false,
        migrate: true,
    },
    Svc {
        name: "catalog",
        legacy: 2,
        mesh: 0,
        calls: &[(LoadProtocol::Http, 1)],
        direct: true,
        migrate: false,
    },
    Svc {
        name: "inventory",
        legacy: 1,
        mesh: 0,
        calls: &[(LoadProtocol::Http, 1)],
        direct: false,
        migrate: false,
    },
    Svc {
        name: "frontend",
        legacy: 0,
        mesh: 1,
        calls: &[(LoadProtocol::Http, 1)],
        direct: false,
        migrate: false,
    },
];

pub struct Fleet {
    consul_url: String,
    _simulated: Option<ConsulDouble>,
    registered: Vec<String>,
    plane: ControlPlane,
    dir: PathBuf,
    /// (service, instance) -> app
    apps: Vec<SampleApp>,
    sidecars: Vec<Proxy>,
    /// A meshed `ratings` instance behind stock Envoy, when Envoy is installed, with the SDS
    /// socket that hands it its certificate.
    envoy: Option<(Envoy, jalur_agent::SdsSocket)>,
    front: Proxy,
    front_addr: SocketAddr,
    /// Every jalur proxy's identity from the control plane's CA, renewed while the fleet runs.
    identities: Vec<CertRotator>,
    targets: Vec<LoadTarget>,
}

impl Fleet {
    pub async fn start(args: &Args) -> anyhow::Result<Fleet> {
        let (consul_url, simulated) = match &args.consul {
            Some(addr) => {
                let url = if addr.contains("://") {
                    addr.clone()
                } else {
                    format!("http://{addr}")
                };
                (url, None)
            }
            None => {
                let double = ConsulDouble::start().await;
                (double.url(), Some(double))
            }
        };
        say!(
            "legacy registry: {}",
            if simulated.is_some() {
                format!("simulated Consul (a protocol double of Consul's HTTP API) at {consul_url}")
            } else {
                format!("Consul at {consul_url}")
            }
        );
        let mut apps = Vec::new();
        let mut registered = Vec::new();
        for svc in &SERVICES {
            for i in 1..=svc.legacy {
                let app = SampleApp::start(svc.name, &format!("legacy-{i}"))?;
                let id = format!("jalur-demo-{}-{i}", svc.name);
                register(&consul_url, &id, svc.name, app.addr(), "jalur-demo").await?;
                registered.push(id);
                apps.push(app);
            }
        }
        say!("  {} legacy instances registered", registered.len());

        let dir = std::env::temp_dir().join(format!("jalur-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, text) in config(&consul_url, args.hold) {
            std::fs::write(dir.join(file), text)?;
        }
        let plane = ControlPlane::start(Options {
            config: vec![dir.clone()],
            xds_addr: args.xds_addr,
            xds_tls_addr: args.xds_tls_addr,
            // Plaintext xDS stays open for poking at the demo with development clients; every
            // proxy of the fleet (jalur and Envoy) uses 15012.
            insecure_xds: true,
            status_addr: args.status_addr,
            state_dir: Some(dir.join(".jalur")),
            ca: Some(jalur_control::ca::CaOptions::default()),
            ..Options::default()
        })
        .await?;
        let tls = plane
            .xds_tls_addr
            .context("the control plane serves no TLS port")?;
        say!(
            "control plane: xDS + CA over TLS {tls} (every proxy), plaintext xDS {} (development), status http://{}",
            plane.xds_addr,
            plane.status_addr
        );
        let mut identities = Vec::new();

        let mut sidecars = Vec::new();
        let mut envoy = None;
        let envoy_binary = std::env::current_dir()
            .ok()
            .and_then(|dir| jalur_demo::envoy::find_binary(&dir));
        for svc in &SERVICES {
            for i in 1..=svc.mesh {
                if let (Some(binary), "ratings", 2) = (&envoy_binary, svc.name, i) {
                    let app = SampleApp::start(svc.name, &format!("mesh-{i}-envoy"))?;
                    let identity = mesh_identity(&plane, &dir, svc.name).await?;
                    envoy =
                        Some(envoy_sidecar(binary, &plane, &dir, svc.name, &app, &identity).await?);
                    identities.push(identity);
                    apps.push(app);
                    continue;
                }
                let app = SampleApp::start(svc.name, &format!("mesh-{i}"))?;
                let identity = mesh_identity(&plane, &dir, svc.name).await?;
                let proxy = Proxy::start(ProxyOptions {
                    app_port: Some(app.addr().port()),
                    ports: vec![jalur_wire::NamedPort {
                        name: "http2".into(),
                        number: u32::from(SERVICE_PORT),
                    }],
                    labels: [("version".to_string(), format!("mesh-{i}"))].into(),
                    ..secure_opts(tls, svc.name, &identity)
                })
                .await?;
                identities.push(identity);
                apps.push(app);
                sidecars.push(proxy);
            }
        }
        let front_identity = mesh_identity(&plane, &dir, "front").await?;
        let front = Proxy::start(secure_opts(tls, "front", &front_identity)).await?;
        identities.push(front_identity);
        let front_addr = until(
            "the fronting proxy listens",
            Duration::from_secs(20),
            || {
                std::future::ready(
                    front
                        .listeners()
                        .into_iter()
                        .find(|(n, _)| n == "outbound")
                        .map(|(_, a)| a),
                )
            },
        )
        .await?;
        // Legacy callers find the fronting proxy in Consul, as they found their services
        // before (not tagged jalur-demo: the ConsulRegistry does not import it).
        register(&consul_url, FRONT_ID, "front", front_addr, "fronting").await?;
        registered.push(FRONT_ID.to_string());
        let mut fleet = Fleet {
            consul_url,
            _simulated: simulated,
            registered,
            plane,
            dir,
            apps,
            sidecars,
            envoy,
            front,
            front_addr,
            identities,
            targets: Vec::new(),
        };
        fleet.targets = fleet.load_targets().await?;
        fleet.wait_ready().await?;
        Ok(fleet)
    }

    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for svc in &SERVICES {
            let role = match (svc.migrate, svc.direct, svc.legacy, svc.mesh) {
                (true, ..) => "moves to the mesh",
                (_, true, ..) => "legacy, called straight from Consul",
                (_, _, 0, _) => "mesh only",
                _ => "legacy, behind the fronting proxy",
            };
            lines.push(format!(
                "{:<10} {} legacy + {} meshed instances — {role}",
                svc.name, svc.legacy, svc.mesh
            ));
        }
        lines.push(match &self.envoy {
            Some((e, _)) => format!(
                "one meshed ratings instance runs behind stock Envoy, its certificate served over SDS as jalur agent does (admin http://{})",
                e.admin_addr()
            ),
            None => "stock Envoy not found (scripts/install-peers installs it): every sidecar is jalur proxy".into(),
        });
        lines.push(format!(
            "fronting proxy: jalur proxy at {}, registered in Consul as `front`: legacy callers find it there",
            self.front_addr
        ));
        lines.push(self.security());
        lines
    }

    /// What the fleet's identities are: every proxy's SPIFFE certificate from the CA.
    pub fn security(&self) -> String {
        let mut ids: Vec<String> = self
            .identities
            .iter()
            .map(|r| r.credentials().borrow().cert.id.service_account.clone())
            .collect();
        ids.dedup();
        format!(
            "mTLS: on, STRICT in namespace {NS} — {} proxies{} hold SPIFFE certificates from the control plane's CA (spiffe://cluster.local/ns/{NS}/sa/{{{}}}), bootstrapped with one-shot tokens the demo minted; xDS over TLS (15012), mTLS between them",
            self.identities.len(),
            if self.envoy.is_some() { " (one of them stock Envoy over SDS)" } else { "" },
            ids.join(","),
        )
    }

    pub fn status_addr(&self) -> SocketAddr {
        self.plane.status_addr
    }

    pub fn targets(&self) -> &[LoadTarget] {
        &self.targets
    }

    pub fn start_load(&self, rate: u32) -> LoadGen {
        LoadGen::start(LoadSpec {
            rate,
            targets: self.targets.clone(),
            timeout: Duration::from_secs(10),
        })
    }

    pub async fn wait_load(&self, load: &LoadGen, n: usize) -> anyhow::Result<()> {
        until("the load runs", Duration::from_secs(30), || {
            std::future::ready((load.samples().len() >= n).then_some(()))
        })
        .await
    }

    pub fn command(&self, name: &str, c: Command) -> anyhow::Result<MigrationStatus> {
        Ok(self.plane.state.migrations.command(name, Some(NS), c)?)
    }

    pub fn statuses(&self) -> Vec<MigrationStatus> {
        self.plane.state.migrations.statuses()
    }

    pub fn inject_fault(&self, service: &str, percent: u32) {
        for app in &self.apps {
            if app.service() == service && app.instance().starts_with("mesh") {
                app.set_fault_percent(percent);
            }
        }
    }

    /// The load target names that belong to `service`.
    pub fn targets_of(&self, service: &str) -> Vec<usize> {
        self.targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.name.starts_with(&format!("{service} ")))
            .map(|(i, _)| i)
            .collect()
    }

    async fn load_targets(&self) -> anyhow::Result<Vec<LoadTarget>> {
        let mut targets = Vec::new();
        let front = passing_instance(&self.consul_url, "front").await?;
        for svc in &SERVICES {
            for (protocol, weight) in svc.calls {
                let kind = match protocol {
                    LoadProtocol::Http => "HTTP",
                    LoadProtocol::Http2 => "HTTP/2",
                    LoadProtocol::Grpc => "gRPC",
                };
                let (addr, authority) = if svc.direct {
                    // Legacy client-side discovery: ask Consul, call an instance directly.
                    (
                        passing_instance(&self.consul_url, svc.name).await?,
                        svc.name.to_string(),
                    )
                } else if svc.legacy > 0 {
                    (front, format!("{}.service.consul", svc.name))
                } else {
                    (front, format!("{}.{NS}.svc.cluster.local", svc.name))
                };
                targets.push(LoadTarget {
                    name: format!("{} {kind}", svc.name),
                    addr,
                    authority,
                    protocol: *protocol,
                    weight: *weight,
                });
            }
        }
        Ok(targets)
    }

    /// Every route answers through the front and every meshed instance is registered.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let expected: usize = SERVICES.iter().map(|s| s.mesh).sum();
        until(
            "every meshed instance registers",
            Duration::from_secs(30),
            || {
                let mesh = self.plane.state.mesh.load();
                let n: usize = mesh
                    .endpoints
                    .iter()
                    .filter(|(k, _)| k.contains(&format!(".{NS}.svc.cluster.local")))
                    .map(|(_, v)| v.len())
                    .sum();
                std::future::ready((n >= expected).then_some(()))
            },
        )
        .await?;
        for t in &self.targets {
            let probe = LoadGen::start(LoadSpec {
                rate: 50,
                targets: vec![t.clone()],
                timeout: Duration::from_secs(2),
            });
            let r = until(
                &format!("{} answers", t.name),
                Duration::from_secs(30),
                || std::future::ready(probe.samples().iter().any(|s| s.ok).then_some(())),
            )
            .await;
            probe.stop().await;
            r?;
        }
        Ok(())
    }

    pub async fn stop(self) {
        for p in self.sidecars {
            p.shutdown().await;
        }
        self.front.shutdown().await;
        for identity in self.identities {
            identity.stop();
        }
        drop(self.envoy);
        for id in &self.registered {
            let path = format!("/v1/agent/service/deregister/{id}");
            if let Err(e) = consul_call(&self.consul_url, Method::PUT, &path, None).await {
                tracing::warn!(id, error = %e, "cannot deregister a demo instance from Consul");
            }
        }
        self.plane.stop().await;
        for a in self.apps {
            a.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A meshed instance of `service` behind a stock Envoy sidecar configured by the same control
/// plane, the way `jalur agent` runs one: its identity from the CA (`identity`), served to
/// Envoy over SDS on a private Unix socket, ADS over mTLS on 15012; inbound on a port it
/// announces, to the app on its own port.
async fn envoy_sidecar(
    binary: &std::path::Path,
    plane: &ControlPlane,
    dir: &std::path::Path,
    service: &str,
    app: &SampleApp,
    identity: &CertRotator,
) -> anyhow::Result<(Envoy, jalur_agent::SdsSocket)> {
    let workload = format!("{service}-envoy-1");
    let creds = identity.credentials();
    let id = creds.borrow().cert.id.clone();
    let socket = dir.join(format!("{workload}-sds.sock"));
    let sds = jalur_agent::SdsSocket::bind(&socket, creds).await?;
    let tls = plane.xds_tls_addr.context("no TLS port")?;
    let control = jalur_agent::bootstrap::ControlPlane::from_addr(
        tls,
        jalur_identity::channel::control_plane_id(&id.trust_domain, "jalur-system"),
    );
    let node_id = format!("sidecar~127.0.0.1~{workload}.{NS}~{NS}.svc.cluster.local");
    let mut bootstrap = jalur_agent::bootstrap::EnvoyBootstrap::new(&id, node_id, &socket, control);
    let meta = &mut bootstrap.meta;
    meta.instance_ips = vec!["127.0.0.1".into()];
    meta.workload_name = Some(workload.clone());
    meta.labels.insert("app".into(), service.into());
    meta.labels.insert("version".into(), "envoy-1".into());
    meta.service = Some(service.into());
    meta.ports = vec![jalur_wire::NamedPort {
        name: "http2".into(),
        number: u32::from(SERVICE_PORT),
    }];
    meta.app_port = Some(u32::from(app.addr().port()));
    meta.listen_address = Some("127.0.0.1".into());
    meta.inbound_port = Some(u32::from(free_port()?));
    meta.outbound_port = Some(u32::from(free_port()?));
    bootstrap.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    let envoy = Envoy::start_with_bootstrap(binary, &bootstrap.to_json())
        .await
        .map_err(anyhow::Error::msg)?;
    Ok((envoy, sds))
}

/// A port the kernel just handed out and took back. Envoy's listeners come from xDS, so the
/// control plane must know the inbound port before Envoy binds it (jalur proxies bind first and
/// announce; Envoy cannot). A race with another process taking it is possible but harmless here:
/// Envoy would report the bind failure in its log and the demo's readiness check would say so.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A jalur proxy of `service` on loopback, on the control plane's TLS port with `identity`.
fn secure_opts(tls: SocketAddr, service: &str, identity: &CertRotator) -> ProxyOptions {
    ProxyOptions {
        xds: format!("https://{tls}"),
        credentials: Some(identity.credentials()),
        ..ProxyOptions::loopback(tls, service, NS)
    }
}

/// `service`'s identity from the control plane's CA, the way an operator would give a
/// workload one: a one-shot bootstrap token (minted here), the trust bundle file, a CSR.
async fn mesh_identity(
    plane: &ControlPlane,
    dir: &std::path::Path,
    service: &str,
) -> anyhow::Result<CertRotator> {
    let ca = plane
        .state
        .ca
        .as_ref()
        .context("the control plane has no CA")?;
    let token = ca
        .tokens
        .create(NS, service, Duration::from_secs(600), false)
        .map_err(|e| anyhow::anyhow!("minting a bootstrap token for {service}: {e}"))?;
    let tls = plane.xds_tls_addr.context("no TLS port")?;
    let id = SpiffeId::new(jalur_identity::DEFAULT_TRUST_DOMAIN, NS, service);
    let mut opts = RotatorOptions::new(
        format!("https://{tls}"),
        id,
        dir.join(".jalur/ca/trust-bundle.pem"),
    );
    opts.token = Some(token.token);
    CertRotator::start(opts)
        .await
        .with_context(|| format!("the workload certificate of {service}"))
}

/// The demo's config: the Consul registry, the meshed services, one Migration per moving service.
fn config(consul_url: &str, hold: Duration) -> Vec<(String, String)> {
    let hold = format!("{}ms", hold.as_millis());
    let mut files = vec![(
        "consul.yaml".to_string(),
        format!("apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {{name: legacy, namespace: {NS}}}\nspec:\n  addresses: [\"{consul_url}\"]\n  servicePort: {SERVICE_PORT}\n  services: {{tags: [jalur-demo]}}\n"),
    )];
    for svc in SERVICES.iter().filter(|s| s.mesh > 0) {
        files.push((
            format!("{}-service.yaml", svc.name),
            format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {n}, namespace: {NS}}}\nspec:\n  hosts: [{n}.{NS}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: {SERVICE_PORT}, name: http2, protocol: HTTP2}}\n", n = svc.name),
        ));
    }
    // Every meshed instance is reached through a sidecar with an identity (callers: other
    // sidecars and the fronting proxy): plaintext into the namespace's sidecars is refused.
    files.push((
        "peer-authentication.yaml".to_string(),
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {NS}}}\nspec:\n  mtls: {{mode: STRICT}}\n"),
    ));
    for svc in SERVICES.iter().filter(|s| s.migrate) {
        files.push((
            format!("{}-migration.yaml", svc.name),
            format!("apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {{name: {n}, namespace: {NS}}}\nspec:\n  legacy: {{registry: legacy, service: {n}}}\n  mesh: {{host: {n}}}\n  stages:\n  - {{weight: 5, hold: {hold}}}\n  - {{weight: 25, hold: {hold}}}\n  - {{weight: 50, hold: {hold}}}\n  - {{weight: 100, hold: {hold}}}\n  gates: {{maxErrorRate: 0.01, maxP99Ratio: 3, p99Allowance: 25ms, minRequests: 5, window: {hold}}}\n  onFailure: rollback\n", n = svc.name),
        ));
    }
    files
}

/// Registers a legacy instance through the Consul agent API (the same call against the
/// simulated registry and a real Consul), healthy without checks.
async fn register(
    consul_url: &str,
    id: &str,
    name: &str,
    addr: SocketAddr,
    tag: &str,
) -> anyhow::Result<()> {
    let body = json!({
        "ID": id,
        "Name": name,
        "Address": addr.ip().to_string(),
        "Port": addr.port(),
        "Tags": [tag],
        "Meta": { "protocol": "http2" },
    });
    consul_call(
        consul_url,
        Method::PUT,
        "/v1/agent/service/register",
        Some(body),
    )
    .await
    .with_context(|| format!("registering {id} in Consul at {consul_url}"))?;
    Ok(())
}

async fn passing_instance(consul_url: &str, name: &str) -> anyhow::Result<SocketAddr> {
    let path = format!("/v1/health/service/{name}?passing=1");
    let entries = until(
        &format!("Consul lists {name}"),
        Duration::from_secs(10),
        || async {
            match consul_call(consul_url, Method::GET, &path, None).await {
                Ok(Value::Array(a)) if !a.is_empty() => Some(a),
                _ => None,
            }
        },
    )
    .await?;
    let svc = &entries[0]["Service"];
    let ip = svc["Address"].as_str().unwrap_or("127.0.0.1");
    let port = svc["Port"].as_u64().unwrap_or(0);
    format!("{ip}:{port}")
        .parse()
        .with_context(|| format!("instance of {name} in Consul"))
}

async fn consul_call(
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", base.trim_end_matches('/')))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .context("Consul did not answer within 5s")??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "Consul answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Polls `f` (backing off, see `jalur_demo::eventually`) until it yields, or fails naming
/// `what` after `within`.
pub async fn until<T, Fut>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Fut,
) -> anyhow::Result<T>
where
    Fut: std::future::Future<Output = Option<T>>,
{
    jalur_demo::eventually::eventually(within, || {
        let attempt = f();
        async move { attempt.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("timed out after {within:?} waiting until {what} ({e})"))
}

/// Instances per (service, path) for the report.
pub fn is_mesh_instance(instance: Option<&str>) -> bool {
    instance.is_some_and(|i| i.starts_with("mesh"))
}
