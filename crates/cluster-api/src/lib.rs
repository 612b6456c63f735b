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

mod client;
mod frame;
mod messages;
pub mod redact;

pub use client::{Client, ClientError, Endpoint};
pub use frame::{decode, encode, framed, FrameError, FramedStream, MAX_FRAME_BYTES, PROTOCOL_VERSION};
pub use messages::{
    ApiError, ClientReply, ClientRequest, ErrorKind, NodeDiagnostics, NodeRole, NodeStatus, PeerRequest, PeerRpc,
    Request, Response, StatusReport,
};
