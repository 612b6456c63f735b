//! Requests and responses in either protocol: this release's (4) and v0.1.0's (3).
//!
//! ```text
//!   frame 3 ──decode_request──> v0_1::Request ──From──> Request ──(served)──> Response
//!   Response ──encode_response(3)──> v0_1::Response ──> frame 3     (answer in the asker's protocol)
//!   Request ──encode_request(p)──> frame p      (p = the sender's cluster version, or 3 after a refusal)
//! ```

use bytes::Bytes;

use crate::frame::{decode_body, encode_as, frame_version, FrameError, PROTOCOL_V0_1, PROTOCOL_VERSION};
use crate::{v0_1, Request, Response};

/// Encodes `request` in `protocol`; fails when that protocol cannot carry it.
pub fn encode_request(request: &Request, protocol: u8) -> Result<Bytes, FrameError> {
    match protocol {
        PROTOCOL_V0_1 => {
            let old = v0_1::request_to_v0_1(request).map_err(|needs| FrameError::Unsupported(needs.to_string()))?;
            encode_as(&old, PROTOCOL_V0_1)
        }
        _ => encode_as(request, PROTOCOL_VERSION),
    }
}

/// Decodes a request of any supported protocol; returns the protocol to answer in.
pub fn decode_request(frame: &[u8]) -> Result<(u8, Request), FrameError> {
    match frame_version(frame)? {
        PROTOCOL_V0_1 => Ok((PROTOCOL_V0_1, decode_body::<v0_1::Request>(frame)?.into())),
        version => Ok((version, decode_body(frame)?)),
    }
}

/// Encodes `response` in `protocol` (the one the request came in).
pub fn encode_response(response: Response, protocol: u8) -> Result<Bytes, FrameError> {
    match protocol {
        PROTOCOL_V0_1 => encode_as(&v0_1::response_to_v0_1(response), PROTOCOL_V0_1),
        _ => encode_as(&response, PROTOCOL_VERSION),
    }
}

/// Decodes a response of any supported protocol; returns the protocol it came in.
pub fn decode_response(frame: &[u8]) -> Result<(u8, Response), FrameError> {
    match frame_version(frame)? {
        PROTOCOL_V0_1 => Ok((PROTOCOL_V0_1, decode_body::<v0_1::Response>(frame)?.into())),
        version => Ok((version, decode_body(frame)?)),
    }
}

/// Whether `response`, received for a request sent in a newer protocol, is a v0.1.0 node refusing
/// that protocol (it answers in its own, 3, and closes the connection): then nothing was executed
/// and the request may be sent again in protocol 3.
pub fn refused_protocol(received_in: u8, response: &Response) -> bool {
    received_in == PROTOCOL_V0_1
        && matches!(response, Response::Client(Err(err)) if err.message.contains("protocol version")
            && err.message.contains("is not supported"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiError, ClientReply, ClientRequest, ErrorKind};

    #[test]
    fn a_request_is_answered_in_its_own_protocol() {
        let request = Request::Client { request: ClientRequest::KvGet { key: "k".into() }, forwarded: false };
        for protocol in [PROTOCOL_V0_1, PROTOCOL_VERSION] {
            let frame = encode_request(&request, protocol).unwrap();
            assert_eq!(frame[0], protocol);
            assert_eq!(decode_request(&frame).unwrap(), (protocol, request.clone()));
            let reply = Response::Client(Ok(ClientReply::Value { key: "k".into(), value: "v".into() }));
            let frame = encode_response(reply.clone(), protocol).unwrap();
            assert_eq!(decode_response(&frame).unwrap(), (protocol, reply));
        }
    }

    #[test]
    fn what_v0_1_lacks_is_refused_or_turned_into_an_error_naming_both_releases() {
        let request = Request::Client { request: ClientRequest::AlertList, forwarded: false };
        let err = encode_request(&request, PROTOCOL_V0_1).unwrap_err().to_string();
        assert_eq!(err, "request `cluster alert list` needs cluster version 0.2.0");
        let reply = Response::Client(Ok(ClientReply::Alerts { hooks: vec![], next: 0 }));
        let frame = encode_response(reply, PROTOCOL_V0_1).unwrap();
        let (_, Response::Client(Err(err))) = decode_response(&frame).unwrap() else { panic!("an error") };
        assert!(err.message.starts_with("the alert hook list needs cluster version 0.2.0"), "{}", err.message);
        assert!(err.message.contains("protocol 3 (clusterd/clusterctl 0.1.0)"), "{}", err.message);
    }

    #[test]
    fn a_refusal_by_a_v0_1_node_is_recognized() {
        // What v0.1.0's server answers to a frame of protocol 4 (its FrameError::Version text).
        let refusal = Response::Client(Err(ApiError::new(
            ErrorKind::Invalid,
            "malformed request: protocol version 4 is not supported: expected 3",
        )));
        assert!(refused_protocol(PROTOCOL_V0_1, &refusal));
        assert!(!refused_protocol(PROTOCOL_VERSION, &refusal));
        let other = Response::Client(Err(ApiError::new(ErrorKind::Invalid, "key `x` is too long")));
        assert!(!refused_protocol(PROTOCOL_V0_1, &other));
    }
}
