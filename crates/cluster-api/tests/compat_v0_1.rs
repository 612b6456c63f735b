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

/// Package relations (issue 13) never reach v0.1.0: a `pkg apply` that uses one is refused in its
/// protocol, naming the field and the version; a plain one travels unchanged; the new `pkg
/// status` reply reaches a v0.1.0 client as the packages it knows (why some wait left out).
#[test]
fn package_relations_are_refused_in_v0_1s_protocol_and_left_out_of_its_replies() {
    let parse = |extra: &str| {
        let text = format!(
            "name = \"app\"\n{extra}\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.1/24\"\n\
             interface = \"eth0\"\n"
        );
        cluster_package::parse_package("app.toml", &text).expect("valid package")
    };
    let apply = |def| Request::Client { request: ClientRequest::PkgApply { packages: vec![def] }, forwarded: false };
    let err = encode_request(&apply(parse("needs = { slots = 1 }")), PROTOCOL_V0_1).unwrap_err().to_string();
    assert_eq!(err, "package `app` uses `needs`, which needs cluster version 0.2.0");
    let plain = apply(parse(""));
    let frame = encode_request(&plain, PROTOCOL_V0_1).unwrap();
    assert_eq!(decode_request(&frame).unwrap(), (PROTOCOL_V0_1, plain));

    let package = cluster_model::PackageState::new(parse(""), 5);
    let reply =
        ClientReply::PackageStatus { packages: vec![package.clone()], waiting: vec![("app".into(), "x".into())] };
    let frame = encode_response(Response::Client(Ok(reply)), PROTOCOL_V0_1).unwrap();
    let (_, response) = decode_response(&frame).unwrap();
    assert_eq!(response, Response::Client(Ok(ClientReply::Packages { packages: vec![package] })));
}
