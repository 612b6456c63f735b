//! The wire protocol between `clusterctl`, `clusterd` and its peers, and a small client.
//!
//! One framing for everything: a 4-byte big-endian length, then a frame whose first byte is the
//! protocol version and whose rest is a postcard-encoded [`Request`] or [`Response`]. Peer RPCs
//! carry Raft messages as opaque bytes so that this crate (and so `clusterctl`) never links the
//! Raft library.
//!
//! ```text
//!  clusterctl ──unix socket (root, 0600)──┐
//!  clusterctl ──TCP + mutual TLS──────────┤──> clusterd ── Request::Client ──> leader (forwarded)
//!  peer clusterd ──TCP + mutual TLS───────┘            └─ Request::Peer ───> Raft
//! ```

//!
//! Every frame starts with a protocol version byte; a node answers in the version it was asked in,
//! and reads v0.1.0's protocol (3) through the frozen types of [`v0_1`] (see [`wire`]).

mod client;
mod frame;
mod messages;
pub mod redact;
pub mod v0_1;
pub mod wire;

pub use client::{Client, ClientError, Endpoint};
pub use frame::{
    decode, decode_body, encode, encode_as, frame_version, framed, protocol_for, protocol_release, release_buffers,
    FrameError, FramedStream, MAX_FRAME_BYTES, PROTOCOL_V0_1, PROTOCOL_VERSION,
};
pub use messages::{
    ApiError, ClientReply, ClientRequest, ErrorKind, NodeDiagnostics, NodeRole, NodeStatus, NodeVersion, PeerRequest,
    PeerRpc, Request, Response, StatusReport,
};
