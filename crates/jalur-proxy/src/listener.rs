//! Listeners as the config says: bound, re-pointed or closed whenever a new snapshot arrives.
//! A listener whose address stays keeps its socket (no connection is refused during a config
//! change); its route source is swapped under it. Closing a listener stops accepting; the
//! connections it accepted finish on their own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Listener, ListenerKind, Snapshot};
use crate::framing::Verdict;
use crate::rbac::Downstream;
use crate::runtime::{ListenerCtx, Runtime};
use crate::tls::{Accepted, Terminator};

/// Downstream header limit: larger request heads get 431 and are never forwarded.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

struct Active {
    addr: SocketAddr,
    tls: Option<crate::config::ServerTls>,
    plaintext_too: bool,
    bound: SocketAddr,
    kind: std::mem::Discriminant<ListenerKind>,
    ctx: Arc<ArcSwap<ListenerCtx>>,
    transport: Arc<ArcSwap<Transport>>,
    task: JoinHandle<()>,
}

/// How a listener's new connections are taken: swapped under a bound socket when only the TLS
/// changes (a PeerAuthentication going from PERMISSIVE to STRICT must not close the port).
#[derive(Clone, Default)]
struct Transport {
    tls: Option<Terminator>,
    plaintext_too: bool,
}

impl Transport {
    fn new(rt: &Runtime, l: &Listener) -> Result<Transport, String> {
        let tls = l
            .tls
            .as_ref()
            .map(|t| Terminator::new(t, rt.credentials.as_ref()))
            .transpose()?;
        Ok(Transport {
            tls,
            plaintext_too: l.plaintext_too,
        })
    }
}

/// The bound listeners, by name.
#[derive(Default)]
pub struct Listeners {
    active: HashMap<String, Active>,
    /// Sockets bound before any config arrived (a sidecar's own outbound and inbound ports), taken
    /// by the xDS listener at that address.
    reserved: HashMap<SocketAddr, TcpListener>,
}

impl Listeners {
    pub fn with_reserved(reserved: Vec<TcpListener>) -> Listeners {
        let reserved = reserved
            .into_iter()
            .filter_map(|l| Some((l.local_addr().ok()?, l)))
            .collect();
        Listeners {
            active: HashMap::new(),
            reserved,
        }
    }

    /// Brings the bound listeners in line with `snap`. Returns the bind failures (name, error).
    pub async fn reconcile(
        &mut self,
        rt: &Arc<Runtime>,
        snap: &Snapshot,
        drain: &watch::Receiver<bool>,
    ) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        self.active.retain(|name, a| {
            let keep = snap
                .listeners
                .get(name)
                .is_some_and(|l| l.addr == a.addr && std::mem::discriminant(&l.kind) == a.kind);
            if !keep {
                tracing::info!(listener = %name, addr = %a.bound, "listener closed");
                a.task.abort();
            }
            keep
        });
        for (name, l) in &snap.listeners {
            let ctx = ListenerCtx::new(rt, l);
            if let Some(a) = self.active.get_mut(name) {
                a.ctx.store(Arc::new(ctx));
                if l.tls != a.tls || l.plaintext_too != a.plaintext_too {
                    match Transport::new(rt, l) {
                        Ok(t) => {
                            tracing::info!(listener = %name, tls = l.tls.is_some(), plaintext = l.plaintext_too, "listener TLS changed");
                            a.transport.store(Arc::new(t));
                            a.tls = l.tls.clone();
                            a.plaintext_too = l.plaintext_too;
                        }
                        Err(e) => {
                            tracing::error!(listener = %name, error = %e, "cannot set up TLS; keeping the previous");
                            failures.push((name.clone(), e));
                        }
                    }
                }
                continue;
            }
            let transport = match Transport::new(rt, l) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "cannot set up TLS");
                    failures.push((name.clone(), e));
                    continue;
                }
            };
            let socket = match self.reserved.remove(&l.addr) {
                Some(reserved) => Ok(reserved),
                None => TcpListener::bind(l.addr).await,
            };
            match socket {
                Ok(socket) => {
                    let bound = socket.local_addr().unwrap_or(l.addr);
                    tracing::info!(listener = %name, addr = %bound, "listening");
                    let ctx = Arc::new(ArcSwap::from_pointee(ctx));
                    let transport = Arc::new(ArcSwap::from_pointee(transport));
                    let task = tokio::spawn(accept_loop(
                        rt.clone(),
                        l.clone(),
                        socket,
                        ctx.clone(),
                        drain.clone(),
                        transport.clone(),
                    ));
                    self.active.insert(
                        name.clone(),
                        Active {
                            addr: l.addr,
                            tls: l.tls.clone(),
                            plaintext_too: l.plaintext_too,
                            bound,
                            kind: std::mem::discriminant(&l.kind),
                            ctx,
                            transport,
                            task,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(listener = %name, addr = %l.addr, error = %e, "cannot bind listener");
                    failures.push((name.clone(), format!("cannot bind {}: {e}", l.addr)));
                }
            }
        }
        failures
    }

    /// Actual bound addresses (port 0 resolved), for the admin API and tests.
    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = self
            .active
            .iter()
            .map(|(n, a)| (n.clone(), a.bound))
            .collect();
        v.sort();
        v
    }

    /// Stops accepting everywhere (drain starts).
    pub fn close_all(&mut self) {
        for (_, a) in self.active.drain() {
            a.task.abort();
        }
    }
}

async fn accept_loop(
    rt: Arc<Runtime>,
    l: Arc<Listener>,
    socket: TcpListener,
    ctx: Arc<ArcSwap<ListenerCtx>>,
    drain: watch::Receiver<bool>,
    transport: Arc<ArcSwap<Transport>>,
) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %l.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (rt, ctx, drain, transport, l) = (
            rt.clone(),
            ctx.clone(),
            drain.clone(),
            transport.load_full(),
            l.clone(),
        );
        rt.connection_opened();
        // The handshake runs in the connection's own task: a slow client holds up nobody.
        tokio::spawn(async move {
            let accepted = match &transport.tls {
                None => Ok(Accepted::Plain(stream)),
                Some(t) => t.accept(stream, transport.plaintext_too).await,
            };
            match accepted {
                Ok(conn) => serve(conn, &l, rt.clone(), ctx, peer, drain).await,
                Err(e) => {
                    tracing::debug!(listener = %l.name, %peer, error = %e, "connection refused")
                }
            }
            rt.connection_closed();
        });
    }
}

/// One accepted connection, plaintext or TLS, through the listener's network filter.
async fn serve(
    conn: Accepted,
    l: &Listener,
    rt: Arc<Runtime>,
    ctx: Arc<ArcSwap<ListenerCtx>>,
    peer: SocketAddr,
    drain: watch::Receiver<bool>,
) {
    let downstream = match &conn {
        Accepted::Plain(s) => downstream(s, None),
        Accepted::Tls(s, _) => downstream(s.get_ref().0, s.get_ref().1.server_name()),
    };
    let Some(downstream) = downstream else {
        return;
    };
    // A listener routing by SNI decides once it has read the ClientHello (`sni.rs`).
    let by_sni = matches!(l.kind, ListenerKind::Sni(_));
    if let Some(chain) = ctx.load().network_rbac.as_ref().filter(|_| !by_sni) {
        let security = match &conn {
            Accepted::Plain(_) => None,
            Accepted::Tls(_, security) => Some(security.peer_names.as_slice()),
        };
        if !crate::tcp::network_rbac_allows(chain, peer, &downstream, security) {
            tracing::debug!(listener = %l.name, %peer, "connection denied by network RBAC; closing");
            return;
        }
    }
    match (&l.kind, conn) {
        (ListenerKind::Http(_), Accepted::Plain(s)) => {
            serve_http(s, rt, ctx, peer, drain, None, downstream).await
        }
        (ListenerKind::Http(_), Accepted::Tls(s, security)) => {
            let security = Some(Arc::new(security));
            serve_http(s, rt, ctx, peer, drain, security, downstream).await
        }
        (ListenerKind::Sni(routes), Accepted::Plain(s)) => {
            let network_rbac = ctx.load().network_rbac.clone();
            crate::sni::proxy(rt, routes, network_rbac, s, peer, &downstream).await
        }
        // A listener routing by SNI never terminates TLS (refused at conversion).
        (ListenerKind::Sni(_), Accepted::Tls(..)) => {}
        (ListenerKind::Tcp(tcp), conn) => {
            let inbound = ctx.load().inbound;
            match conn {
                Accepted::Plain(s) => {
                    crate::tcp::proxy(rt, tcp.clone(), s, peer, inbound, None).await
                }
                Accepted::Tls(s, security) => {
                    let security = Some(Arc::new(security));
                    crate::tcp::proxy(rt, tcp.clone(), s, peer, inbound, security).await
                }
            }
        }
    }
}

/// The connection's local address and SNI, for RBAC (`None`: the socket is already gone).
fn downstream(s: &tokio::net::TcpStream, sni: Option<&str>) -> Option<Arc<Downstream>> {
    Some(Arc::new(Downstream {
        local: s.local_addr().ok()?,
        sni: sni.map(Arc::from),
    }))
}

/// Serves HTTP/1.1 or HTTP/2 (prior knowledge or ALPN) on one connection until it ends or the
/// proxy drains.
async fn serve_http<I>(
    io: I,
    rt: Arc<Runtime>,
    ctx: Arc<ArcSwap<ListenerCtx>>,
    peer: SocketAddr,
    mut drain: watch::Receiver<bool>,
    tls: Option<Arc<crate::tls::ConnSecurity>>,
    downstream: Arc<Downstream>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let counted = rt.clone();
    let header_timeout = rt.header_read_timeout;
    // Drain period: set by a request answered while draining, on HTTP/2 (see `close_if_draining`).
    let goaway = Arc::new(tokio::sync::Notify::new());
    let goaway_asked = goaway.clone();
    let (stream, verdicts) = crate::framing::Guard::new(io, header_timeout);
    let judged = verdicts.clone();
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let (rt, goaway) = (rt.clone(), goaway.clone());
        if let Some(tls) = &tls {
            req.extensions_mut().insert(tls.clone());
        }
        let ln = ctx.load_full();
        if ln.rbac.is_some() {
            req.extensions_mut().insert(downstream.clone());
        }
        let verdict = if req.version() < http::Version::HTTP_2 {
            judged.next()
        } else {
            Verdict::Pass { upgrade: false }
        };
        let judged = judged.clone();
        async move {
            let version = req.version();
            let h1 = version < http::Version::HTTP_2;
            let resp = match verdict {
                Verdict::Reject(r) => crate::http::reject_framing(&rt, r),
                Verdict::Pass { upgrade } => {
                    let mut resp = crate::http::handle(rt.clone(), ln, req, peer).await;
                    if upgrade {
                        judged.upgrade_outcome(
                            resp.status() == http::StatusCode::SWITCHING_PROTOCOLS,
                        );
                    }
                    close_if_draining(&rt, version, &mut resp, &goaway);
                    resp
                }
            };
            // The connection's read timers wait until this answer is whole (a long download is
            // not an idle connection).
            let resp = if h1 {
                resp.map(|body| {
                    http_body_util::BodyExt::boxed_unsync(crate::framing::Answering::new(
                        body, judged,
                    ))
                })
            } else {
                resp
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Some(r) = verdicts.aborted() {
                crate::http::count_rejection(&counted, r.reason);
            } else if let Some(reason) = verdicts.timed_out() {
                tracing::debug!(%peer, reason, "connection closed by its read timer");
                crate::http::count_rejection(&counted, reason);
            } else if let Err(e) = r {
                count_rejection(&counted, e.as_ref());
            }
        }
        _ = async { let _ = drain.wait_for(|d| *d).await; } => {
            // Finish the requests in flight, then close (HTTP/1 "Connection: close", HTTP/2 GOAWAY).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        () = goaway_asked.notified() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// While the proxy drains, callers still route here until the endpoint is gone from their EDS:
/// answers tell them to go elsewhere next time (HTTP/1 `Connection: close`; HTTP/2 a GOAWAY
/// once this request is answered), ever more of them as the drain period runs out (`drain.rs`).
fn close_if_draining(
    rt: &Runtime,
    version: http::Version,
    resp: &mut hyper::Response<crate::upstream::Body>,
    goaway: &tokio::sync::Notify,
) {
    if !rt.drain.close_connection() {
        return;
    }
    if version >= http::Version::HTTP_2 {
        goaway.notify_one();
    } else if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
}

/// A connection that ended on a malformed request: hyper already answered 400 (or 431 for
/// oversized headers) and nothing was forwarded; count it by reason.
fn count_rejection(rt: &Runtime, e: &(dyn std::error::Error + 'static)) {
    let Some(he) = e.downcast_ref::<hyper::Error>() else {
        return;
    };
    let reason = if he.is_parse_too_large() {
        "headers_too_large"
    } else if he.is_parse() {
        "malformed_request"
    } else if he.is_timeout() {
        "header_timeout"
    } else {
        return;
    };
    tracing::debug!(reason, error = %he, "downstream request rejected");
    crate::http::count_rejection(rt, reason);
}
