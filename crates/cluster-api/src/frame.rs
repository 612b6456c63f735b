//! Framing and versioned encoding of every message on the wire.
//!
//! Every frame and every peer payload starts with a protocol version byte. A sender writes the
//! version of its cluster (see [`protocol_for`]); a receiver reads every version it supports and
//! answers in the version it was asked in, so a node of the previous release always understands
//! the answer ([`crate::wire`] converts to and from the frozen types of [`crate::v0_1`]).

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Version byte of this release (cluster version 0.2.0).
pub const PROTOCOL_VERSION: u8 = 4;

/// Version byte of v0.1.0 (cluster version 1), still read and written by this release.
pub const PROTOCOL_V0_1: u8 = 3;

/// The protocol a member of a cluster at `version` speaks to its peers.
pub fn protocol_for(version: cluster_model::ClusterVersion) -> u8 {
    if version >= cluster_model::ClusterVersion::V0_2 {
        PROTOCOL_VERSION
    } else {
        PROTOCOL_V0_1
    }
}

/// The first release that speaks `protocol`, for messages.
pub fn protocol_release(protocol: u8) -> &'static str {
    match protocol {
        PROTOCOL_V0_1 => "0.1.0",
        PROTOCOL_VERSION => "0.2.0",
        0..PROTOCOL_V0_1 => "a development build older than 0.1.0",
        _ => "a release newer than this one",
    }
}

/// Largest frame accepted (snapshot chunks are sent well below this).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A frame that could not be decoded; the connection that sent it is closed, nothing else.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty frame: expected a version byte and a message")]
    Empty,
    #[error(
        "protocol version {got} ({}) is not supported: this clusterd speaks {PROTOCOL_V0_1} (0.1.0) and {PROTOCOL_VERSION} (0.2.0)",
        protocol_release(*got)
    )]
    Version { got: u8 },
    /// The message cannot be written in the protocol the receiver speaks.
    #[error("{0}")]
    Unsupported(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit")]
    TooLarge(usize),
}

/// Encodes `message` as a frame body of this release's protocol.
pub fn encode<T: Serialize>(message: &T) -> Result<Bytes, FrameError> {
    encode_as(message, PROTOCOL_VERSION)
}

/// Encodes `message` (already of the shape `protocol` expects) behind the version byte `protocol`.
pub fn encode_as<T: Serialize>(message: &T, protocol: u8) -> Result<Bytes, FrameError> {
    let body = postcard::to_extend(message, vec![protocol]).map_err(|err| FrameError::Malformed(err.to_string()))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    Ok(Bytes::from(body))
}

/// Decodes a frame body of this release's protocol; trailing bytes after the message are an error.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    match frame_version(frame)? {
        PROTOCOL_VERSION => decode_body(frame),
        other => Err(FrameError::Version { got: other }),
    }
}

/// The version byte of a frame or payload; an error for a version this release does not speak.
pub fn frame_version(frame: &[u8]) -> Result<u8, FrameError> {
    match frame.first() {
        None => Err(FrameError::Empty),
        Some(&version) if version == PROTOCOL_VERSION || version == PROTOCOL_V0_1 => Ok(version),
        Some(&version) => Err(FrameError::Version { got: version }),
    }
}

/// Decodes what follows the version byte (the caller chose `T` by that version).
pub fn decode_body<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let rest = frame.get(1..).ok_or(FrameError::Empty)?;
    let (message, trailing) = postcard::take_from_bytes(rest).map_err(|err| FrameError::Malformed(err.to_string()))?;
    if !trailing.is_empty() {
        return Err(FrameError::Malformed(format!("{} unexpected trailing bytes", trailing.len())));
    }
    Ok(message)
}

/// A byte stream wrapped in our length-delimited framing.
pub type FramedStream<S> = Framed<S, LengthDelimitedCodec>;

/// A message larger than this leaves its connection's buffer replaced by an empty one afterwards
/// (see [`release_buffers`]).
const KEPT_BUFFER_BYTES: usize = 4 * 1024;

/// What each of a connection's two buffers holds at first: most messages (lease renewals, Raft
/// heartbeats, small requests) fit, and a larger one grows its buffer for its own length. The
/// codec's default (8 KiB each) made 16 KiB per idle connection, 3 MB on a leader of 50 nodes
/// (two connections per peer).
const INITIAL_BUFFER_BYTES: usize = 1024;

/// After a message of `sent` bytes went out and one of `received` bytes came in on `stream`:
/// gives back the buffer that grew for a large one. A buffer otherwise keeps the size of the
/// largest message it carried (a batch of package definitions, a snapshot), and a leader holds
/// connections to each of 49 peers: 5 MB more after `pkg apply` of 100 packages at 50 nodes.
pub fn release_buffers<S>(stream: &mut FramedStream<S>, sent: usize, received: usize) {
    if sent > KEPT_BUFFER_BYTES && stream.write_buffer().is_empty() {
        *stream.write_buffer_mut() = bytes::BytesMut::new();
    }
    if received > KEPT_BUFFER_BYTES && stream.read_buffer().is_empty() {
        *stream.read_buffer_mut() = bytes::BytesMut::new();
    }
}

/// Wraps a stream in the framing, with the frame size limit enforced on reads and writes.
pub fn framed<S: AsyncRead + AsyncWrite>(stream: S) -> FramedStream<S> {
    let codec = LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_BYTES).new_codec();
    Framed::with_capacity(stream, codec, INITIAL_BUFFER_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientRequest, Request};
    use proptest::prelude::*;

    #[tokio::test]
    async fn a_connection_gives_back_the_buffers_of_a_large_message() {
        use futures::{SinkExt, StreamExt};
        let (a, b) = tokio::io::duplex(1 << 20);
        let (mut a, mut b) = (framed(a), framed(b));
        let large = bytes::Bytes::from(vec![7u8; 300 * 1024]);
        let (sent, received) = tokio::join!(a.send(large.clone()), b.next());
        sent.unwrap();
        let received = received.unwrap().unwrap();
        assert_eq!(received.len(), large.len());
        // What stays allocated is not visible through `capacity` (it counts from the read
        // position); a fresh buffer has none.
        release_buffers(&mut a, large.len(), 0);
        release_buffers(&mut b, 0, received.len());
        assert_eq!(a.write_buffer().capacity(), 0);
        assert_eq!(b.read_buffer().capacity(), 0);
        // Small messages keep their buffers.
        let (sent, received) = tokio::join!(a.send(bytes::Bytes::from_static(b"small")), b.next());
        sent.unwrap();
        let received = received.unwrap().unwrap();
        release_buffers(&mut b, 0, received.len());
        assert!(b.read_buffer().capacity() > 0);
    }

    #[test]
    fn an_idle_connection_holds_small_buffers() {
        let (a, _b) = tokio::io::duplex(64);
        let a = framed(a);
        assert!(a.read_buffer().capacity() <= INITIAL_BUFFER_BYTES, "read buffer {}", a.read_buffer().capacity());
        assert!(a.write_buffer().capacity() <= INITIAL_BUFFER_BYTES, "write buffer {}", a.write_buffer().capacity());
    }

    #[test]
    fn round_trip() {
        let request =
            Request::Client { request: ClientRequest::KvSet { key: "a".into(), value: "b".into() }, forwarded: false };
        let frame = encode(&request).unwrap();
        assert_eq!(frame[0], PROTOCOL_VERSION);
        assert_eq!(decode::<Request>(&frame).unwrap(), request);
    }

    #[test]
    fn wrong_version_and_trailing_bytes_are_refused() {
        let mut frame = encode(&Request::Client { request: ClientRequest::Status, forwarded: false }).unwrap().to_vec();
        frame.push(0);
        assert!(matches!(decode::<Request>(&frame), Err(FrameError::Malformed(_))));
        frame[0] = 9;
        assert_eq!(decode::<Request>(&frame), Err(FrameError::Version { got: 9 }));
        assert_eq!(
            FrameError::Version { got: 9 }.to_string(),
            "protocol version 9 (a release newer than this one) is not supported: this clusterd speaks 3 (0.1.0) and 4 (0.2.0)"
        );
        frame[0] = PROTOCOL_V0_1;
        assert_eq!(decode::<Request>(&frame), Err(FrameError::Version { got: PROTOCOL_V0_1 }), "not this protocol");
        assert_eq!(frame_version(&frame), Ok(PROTOCOL_V0_1));
        assert_eq!(decode::<Request>(&[]), Err(FrameError::Empty));
    }

    proptest! {
        // The decoder must never panic, whatever arrives on the wire.
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<crate::Response>(&bytes);
        }

        // Valid frames with flipped bytes decode to something or fail cleanly.
        #[test]
        fn decoder_survives_mutated_frames(key in "[a-z]{1,20}", value in ".{0,40}", flip in 0usize..64, bit in 0u8..8) {
            let request = Request::Client { request: ClientRequest::KvSet { key, value }, forwarded: true };
            let mut frame = encode(&request).unwrap().to_vec();
            let index = flip % frame.len();
            frame[index] ^= 1 << bit;
            let _ = decode::<Request>(&frame);
        }
    }
}
