//! gRPC's length-prefixed message framing, by hand (no protoc, no codegen): each message on the
//! wire is a 1-byte compressed flag, a 4-byte big-endian length and the message bytes. The demo
//! services treat messages as opaque bytes, so nothing here knows protobuf.

use bytes::{BufMut, Bytes, BytesMut};

/// The content type of a gRPC request or response (`application/grpc+proto` and friends start
/// with it too).
pub const CONTENT_TYPE: &str = "application/grpc";

/// gRPC status codes used here (grpc/doc/statuscodes.md).
pub const STATUS_OK: u32 = 0;
pub const STATUS_UNIMPLEMENTED: u32 = 12;
pub const STATUS_INTERNAL: u32 = 13;

const PREFIX: usize = 5;

/// Why a body is not a sequence of gRPC messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("gRPC body truncated in the message that starts at byte {at}")]
    Truncated { at: usize },
    #[error("compressed gRPC message, but no grpc-encoding was negotiated")]
    Compressed,
}

/// One uncompressed message, framed.
pub fn encode(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(PREFIX + message.len());
    framed.put_u8(0);
    // A message over 4 GiB cannot be framed; the demo's messages are a few bytes.
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(message);
    framed.freeze()
}

/// The messages in a whole gRPC body, in order.
pub fn decode(body: &Bytes) -> Result<Vec<Bytes>, FrameError> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let prefix = body
            .get(at..at + PREFIX)
            .ok_or(FrameError::Truncated { at })?;
        if prefix[0] != 0 {
            return Err(FrameError::Compressed);
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let start = at + PREFIX;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= body.len())
            .ok_or(FrameError::Truncated { at })?;
        messages.push(body.slice(start..end));
        at = end;
    }
    Ok(messages)
}

/// Whether a request or response carries gRPC, by its content type.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with(CONTENT_TYPE))
}

/// The `grpc-status` in a header or trailer map, when present and numeric.
pub fn status_of(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_messages() {
        let framed = encode(b"ping");
        assert_eq!(&framed[..], b"\0\0\0\0\x04ping");
        let mut two = BytesMut::from(&framed[..]);
        two.extend_from_slice(&encode(b""));
        let messages = decode(&two.freeze()).expect("two messages");
        assert_eq!(messages, vec![Bytes::from_static(b"ping"), Bytes::new()]);
        assert_eq!(decode(&Bytes::new()), Ok(vec![]));
    }

    #[test]
    fn rejects_truncated_and_compressed_bodies() {
        assert_eq!(
            decode(&Bytes::from_static(b"\0\0\0\0\x05ping")),
            Err(FrameError::Truncated { at: 0 })
        );
        assert_eq!(
            decode(&Bytes::from_static(b"\0\0\0\0\x04ping\0\0")),
            Err(FrameError::Truncated { at: 9 })
        );
        assert_eq!(
            decode(&Bytes::from_static(b"\x01\0\0\0\x04ping")),
            Err(FrameError::Compressed)
        );
    }
}
