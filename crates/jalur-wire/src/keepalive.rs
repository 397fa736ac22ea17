//! How both ends of an xDS connection find a peer that vanished (a killed VM, a dropped NAT
//! entry, a pulled cable) without ever closing a healthy stream: TCP keepalive, answered by the
//! peer's kernel, instead of HTTP/2 pings, answered by the peer's process.
//!
//! An HTTP/2 ping times out when the process at the other end is too busy to read it in time,
//! which is exactly when a control plane pushes to thousands of proxies: it used to close
//! connections whose pings were answered but not read within 10 s (issue 12), and every closed
//! stream came back as a reconnect and a full push, more load on a plane already behind. The
//! kernel answers keepalive probes however busy the process is, so only a peer that is gone
//! (no host, no socket) fails them: after [`IDLE`] without traffic, [`RETRIES`] probes
//! [`INTERVAL`] apart, i.e. within a minute. [`USER_TIMEOUT`] covers the other case, data sent
//! and never acknowledged (a peer that vanished mid-push), which keepalive does not probe.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Idle time before the first probe.
pub const IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered probes.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel resets the connection.
pub const RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the kernel resets the connection.
pub const USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets TCP keepalive and the user timeout on an xDS connection's socket (either end).
pub fn apply(socket: &impl AsFd) -> io::Result<()> {
    let socket = SockRef::from(socket);
    let keepalive = TcpKeepalive::new()
        .with_time(IDLE)
        .with_interval(INTERVAL)
        .with_retries(RETRIES);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_carries_the_keepalive_settings() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        apply(&client).expect("apply");
        let s = SockRef::from(&client);
        assert!(s.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(s.tcp_keepalive_time().expect("TCP_KEEPIDLE"), IDLE);
        assert_eq!(s.tcp_keepalive_interval().expect("TCP_KEEPINTVL"), INTERVAL);
        assert_eq!(s.tcp_keepalive_retries().expect("TCP_KEEPCNT"), RETRIES);
        assert_eq!(
            s.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(USER_TIMEOUT)
        );
    }
}
