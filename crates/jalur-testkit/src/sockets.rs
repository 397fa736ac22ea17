//! What the kernel says about this host's TCP connections, read with `ss` (Debian `iproute2`):
//! for tests of socket options the code under test sets on sockets a test cannot reach, such as
//! the keepalive of an xDS connection's server end.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// One established TCP connection as `ss` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConn {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The kernel runs a keepalive timer on it (SO_KEEPALIVE is set).
    pub keepalive: bool,
}

/// `ss` (Debian `iproute2`): the one on PATH.
pub fn ss_binary() -> Option<std::path::PathBuf> {
    crate::peers::on_path("ss")
}

/// The established TCP connections with `port` at either end.
pub fn established(ss: &Path, port: u16) -> Result<Vec<TcpConn>, String> {
    let out = Command::new(ss)
        .args(["-tnoH", "state", "established"])
        .output()
        .map_err(|e| format!("{}: {e}", ss.display()))?;
    if !out.status.success() {
        return Err(format!(
            "ss failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|c| c.local.port() == port || c.peer.port() == port)
        .collect())
}

/// `Recv-Q Send-Q Local Peer [timer:(...)]` lines, as `ss -tnoH state established` prints them.
fn parse(text: &str) -> Vec<TcpConn> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(2)?.parse().ok()?;
            let peer = fields.get(3)?.parse().ok()?;
            let keepalive = fields[4..]
                .iter()
                .any(|f| f.starts_with("timer:(keepalive"));
            Some(TcpConn {
                local,
                peer,
                keepalive,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_lines_with_and_without_a_keepalive_timer() {
        let text = "0      0      127.0.0.1:51523 127.0.0.1:33978\n\
                    0      0      127.0.0.1:33978 127.0.0.1:51523 timer:(keepalive,119min,0)\n\
                    0      0      [::1]:80 [::1]:5000 timer:(on,200ms,0)\n";
        let conns = parse(text);
        assert_eq!(conns.len(), 3);
        assert!(!conns[0].keepalive);
        assert!(conns[1].keepalive);
        assert_eq!(conns[1].local, SocketAddr::from(([127, 0, 0, 1], 33978)));
        assert!(!conns[2].keepalive, "a retransmit timer is not keepalive");
    }
}
