//! Builders for hand-built RBAC xDS (Envoy's protos, Istio's shapes) and the small raw clients
//! and servers `tests/rbac.rs` drives both proxies with.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::core::v3::{
    address, data_source, socket_address, substitution_format_string, Address, CidrRange,
    DataSource, SocketAddress, SubstitutionFormatString,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal, Rbac,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    path_matcher, string_matcher::MatchPattern, PathMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::util::pack_any;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

pub const DEADLINE: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------- the policies

pub fn exact(s: &str) -> StringMatcher {
    matcher(MatchPattern::Exact(s.into()), false)
}

pub fn matcher(p: MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ignore_case,
    }
}

pub fn header(name: &str, spec: HeaderMatchSpecifier, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        invert_match: invert,
        ..Default::default()
    }
}

pub fn method(m: &str) -> Permission {
    perm(permission::Rule::Header(header(
        ":method",
        HeaderMatchSpecifier::StringMatch(exact(m)),
        false,
    )))
}

pub fn url_path(m: StringMatcher) -> Permission {
    perm(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(m)),
    }))
}

pub fn perm(r: permission::Rule) -> Permission {
    Permission { rule: Some(r) }
}

pub fn and(rules: Vec<Permission>) -> Permission {
    perm(permission::Rule::AndRules(permission::Set { rules }))
}

pub fn prin(i: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(i),
    }
}

pub fn any_perm() -> Permission {
    perm(permission::Rule::Any(true))
}

pub fn any_prin() -> Principal {
    prin(principal::Identifier::Any(true))
}

pub fn cidr(ip: &str, len: u32) -> CidrRange {
    CidrRange {
        address_prefix: ip.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

pub fn rules(action: Action, policies: Vec<(&str, Vec<Permission>, Vec<Principal>)>) -> Rbac {
    Rbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(name, permissions, principals)| {
                let policy = Policy {
                    permissions,
                    principals,
                    ..Default::default()
                };
                (name.to_string(), policy)
            })
            .collect(),
        ..Default::default()
    }
}

pub fn loopback_port_0() -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        })),
    }
}

pub fn listener(name: &str, filters: Vec<(&str, Any)>) -> Listener {
    Listener {
        name: name.into(),
        address: Some(loopback_port_0()),
        filter_chains: vec![FilterChain {
            filters: filters
                .into_iter()
                .map(|(name, any)| Filter {
                    name: name.into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any)),
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Envoy's file access log: the case number (`x-case`), status and response code details.
pub fn access_log(path: &str) -> AccessLog {
    let format = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString(
                    "%REQ(X-CASE)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n".into(),
                )),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let file = FileAccessLog {
        path: path.into(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(format)),
    };
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(file))),
        ..Default::default()
    }
}

// --------------------------------------------------------------------------------- the peers

/// A TCP echo server counting every byte it receives.
pub struct TcpEcho {
    pub addr: SocketAddr,
    pub received: Arc<AtomicU64>,
}

impl TcpEcho {
    pub async fn start() -> TcpEcho {
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = socket.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        TcpEcho { addr, received }
    }
}

pub async fn connect_from(from: [u8; 4], to: SocketAddr) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::from(from), 0))
        .expect("bind the client address");
    socket.connect(to).await.expect("connect")
}

/// One HTTP/1.1 request (closing the connection) from `from`; (status, content-type, body).
pub async fn request(to: SocketAddr, from: [u8; 4], head: &str) -> (u16, String, String) {
    let mut s = connect_from(from, to).await;
    exchange(&mut s, head).await
}

/// Writes `head`, reads the whole answer (not to EOF: Envoy closes a second after a local
/// reply); (status, content-type, body).
pub async fn exchange<S>(s: &mut S, head: &str) -> (u16, String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(head.as_bytes()).await.expect("write");
    let head_only = head.starts_with("HEAD ");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        while !answered(&buf, head_only) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// Whether `buf` holds a whole response (head, and a body of its content-length).
pub fn answered(buf: &[u8], head_only: bool) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    head_only || body.len() >= length
}

/// Sends `bytes` on a TCP connection from `from`; what came back before the connection ended.
pub async fn tcp_round(to: SocketAddr, from: [u8; 4], bytes: &[u8]) -> Vec<u8> {
    let mut s = connect_from(from, to).await;
    let _ = s.write_all(bytes).await;
    let mut back = vec![0u8; bytes.len()];
    match tokio::time::timeout(DEADLINE, s.read_exact(&mut back)).await {
        Ok(Ok(_)) => back,
        _ => Vec::new(),
    }
}
