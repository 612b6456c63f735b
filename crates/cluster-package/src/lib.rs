//! The package format: TOML package files parsed and validated into model types.
//!
//! # Usage
//!
//! ```
//! let text = r#"
//! name = "web"
//! [[resource]]
//! name = "vip"
//! type = "ip"
//! address = "192.0.2.100/24"
//! interface = "eth0"
//! "#;
//! let package = cluster_package::parse_package("web.toml", text).expect("valid package");
//! assert_eq!(package.resources.len(), 1);
//! ```
//!
//! - [`parse_package`] is pure (no I/O): text in, a [`PackageDef`] or *every* [`Diagnostic`] of the file out.
//!   Each diagnostic displays as `FILE:LINE:COL: field `X`: what was expected`.
//! - [`validate_paths`] is the one function here that touches the filesystem: it takes files or directories
//!   (each directory contributes its `*.toml` files, sorted, not recursive) and returns one [`FileReport`]
//!   per file. `clusterctl pkg validate PATH...` is a thin wrapper: print every diagnostic (or `FILE: ok`),
//!   exit 0 when [`all_valid`] is true, 1 otherwise.
//! - [`validate_set`] checks packages taken together (dependencies exist, no cycle, no contradiction);
//!   [`start_order`] puts dependencies first.
//! - The model types derive `Serialize`/`Deserialize` so they can be stored in the replicated state.
//!
//! Every field and its default is documented in `docs/packages.md`.

mod model;
mod name;
mod parse;
mod paths;
mod quantity;
mod set;

pub use model::{
    Dependency, DeviceSpec, Failback, Failover, FilesystemResource, Instances, IpResource, Location, Monitor, NodeName,
    OcfAgentRef, OcfResource, PackageDef, ProcessOutput, ProcessResource, Promotable, Readiness, ResourceDef,
    ResourceKind, Restart,
};
pub use parse::{parse_package, Diagnostic, MAX_INSTANCES};
pub use paths::{all_valid, set_errors, validate_paths, FileReport, FileResult, PathError};
pub use quantity::{check_capacity_name, format_quantity, parse_quantity};
pub use set::{start_order, validate_set, SetError};
