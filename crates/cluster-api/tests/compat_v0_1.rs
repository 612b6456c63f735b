//! v0.1.0's frames, as v0.1.0's own code encoded them (compat/v0.1.0/fixtures.json): this release
//! decodes every one and, answering in protocol 3, writes exactly the same bytes back.

use std::collections::BTreeMap;

use cluster_api::wire::{decode_request, decode_response, encode_request, encode_response};
use cluster_api::{ClientReply, ClientRequest, ErrorKind, PeerRpc, Request, Response, PROTOCOL_V0_1};

fn fixtures(prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../compat/v0.1.0/fixtures.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let all: BTreeMap<String, String> = serde_json::from_str(&text).expect("fixtures are a JSON object");
    let picked: BTreeMap<String, Vec<u8>> = all
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, hex)| {
            let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            (name, bytes)
        })
        .collect();
    assert!(!picked.is_empty(), "no fixture named {prefix}*");
    picked
}

#[test]
fn every_v0_1_request_frame_decodes_and_encodes_back_to_the_same_bytes() {
    let frames = fixtures("frame/request/");
    assert_eq!(frames.len(), 26 + 9, "26 client operations and 9 peer rpc kinds");
    for (name, frame) in &frames {
        let (protocol, request) = decode_request(frame).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(protocol, PROTOCOL_V0_1, "{name}");
        assert_eq!(&encode_request(&request, PROTOCOL_V0_1).unwrap()[..], &frame[..], "{name}");
    }
    let (_, request) = decode_request(&frames["frame/request/PkgApply"]).unwrap();
    let Request::Client { request: ClientRequest::PkgApply { packages }, forwarded: true } = request else {
        panic!("{request:?}")
    };
    assert_eq!(packages.len(), 4, "every package of v0.1.0's packages.d");
    assert!(packages.iter().any(|def| def.resources.len() == 3));
    let (_, request) = decode_request(&frames["frame/request/Peer-LastAck"]).unwrap();
    assert!(matches!(request, Request::Peer(peer) if peer.rpc == PeerRpc::LastAck));
}

#[test]
fn every_v0_1_response_frame_decodes_and_encodes_back_to_the_same_bytes() {
    let frames = fixtures("frame/response/");
    assert_eq!(frames.len(), 9 + 6 + 2, "9 replies, 6 error kinds, 2 peer answers");
    for (name, frame) in &frames {
        let (protocol, response) = decode_response(frame).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(protocol, PROTOCOL_V0_1, "{name}");
        assert_eq!(&encode_response(response, PROTOCOL_V0_1).unwrap()[..], &frame[..], "{name}");
    }
    let (_, response) = decode_response(&frames["frame/response/Status"]).unwrap();
    let Response::Client(Ok(ClientReply::Status(report))) = response else { panic!("{response:?}") };
    assert_eq!((report.leader.as_deref(), report.term, report.nodes.len()), (Some("n1"), 2, 2));
    assert_eq!(report.nodes[1].lease, None);
    let (_, response) = decode_response(&frames["frame/response/Err-CasMismatch"]).unwrap();
    let Response::Client(Err(err)) = response else { panic!("{response:?}") };
    assert_eq!((err.kind, err.current.as_deref()), (ErrorKind::CasMismatch, Some("v")));
}
