//! A one-document HTTP server, e.g. an identity provider's JWKS endpoint: every request gets
//! the current document as `application/json` (200), or 503 while it is `None`; one request
//! per connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct DocServer {
    pub addr: SocketAddr,
    doc: Arc<Mutex<Option<String>>>,
}

impl DocServer {
    /// Binds 127.0.0.1:0 and serves `doc` until the runtime ends.
    pub async fn start(doc: String) -> DocServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let doc = Arc::new(Mutex::new(Some(doc)));
        let serving = doc.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = serving.lock().expect("doc").clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, body) = match body {
                        Some(b) => ("200 OK", b),
                        None => ("503 Service Unavailable", String::new()),
                    };
                    let resp = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        DocServer { addr, doc }
    }

    /// What the next requests get: `Some(doc)`, or 503 for `None`.
    pub fn serve(&self, doc: Option<String>) {
        *self.doc.lock().expect("doc") = doc;
    }
}
