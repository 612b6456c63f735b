//! Framing and versioned encoding of every message on the wire.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Version byte at the start of every frame; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u8 = 3;

/// Largest frame accepted (snapshot chunks are sent well below this).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A frame that could not be decoded; the connection that sent it is closed, nothing else.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty frame: expected a version byte and a message")]
    Empty,
    #[error("protocol version {got} is not supported: expected {PROTOCOL_VERSION}")]
    Version { got: u8 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit")]
    TooLarge(usize),
}

/// Encodes `message` as a versioned frame body.
pub fn encode<T: Serialize>(message: &T) -> Result<Bytes, FrameError> {
    let body =
        postcard::to_extend(message, vec![PROTOCOL_VERSION]).map_err(|err| FrameError::Malformed(err.to_string()))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    Ok(Bytes::from(body))
}

/// Decodes a versioned frame body; trailing bytes after the message are an error.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let (&version, rest) = frame.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: version });
    }
    let (message, trailing) = postcard::take_from_bytes(rest).map_err(|err| FrameError::Malformed(err.to_string()))?;
    if !trailing.is_empty() {
        return Err(FrameError::Malformed(format!("{} unexpected trailing bytes", trailing.len())));
    }
    Ok(message)
}

/// A byte stream wrapped in our length-delimited framing.
pub type FramedStream<S> = Framed<S, LengthDelimitedCodec>;

/// Wraps a stream in the framing, with the frame size limit enforced on reads and writes.
pub fn framed<S: AsyncRead + AsyncWrite>(stream: S) -> FramedStream<S> {
    let codec = LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_BYTES).new_codec();
    Framed::new(stream, codec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientRequest, Request};
    use proptest::prelude::*;

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
