//! Resource agents and the ordered package runner.
//!
//! - [`Agent`]: the OCF contract (start, stop, monitor, validate, meta-data); outcomes are [`AgentError`]s
//!   carrying an [`OcfStatus`], mapped from host errors in one place (`status.rs`).
//! - One backend per file: `ip.rs`, `filesystem.rs`, `process.rs`, `ocf.rs`, chosen in [`build_agent`].
//! - [`PackageRunner`]: start in file order, stop in reverse, roll back a failed start, collect every error.
//! - [`conformance`]: the checks every agent passes.
//!
//! Construct against the real host with `cluster_host::Host::linux(..)` or the fakes with
//! `cluster_host::fake::FakeHost::new().host()`:
//!
//! ```no_run
//! # async fn example(package: cluster_package::PackageDef) {
//! let host = cluster_host::Host::linux(cluster_host::ProcessConfig::default());
//! let runner = cluster_agents::PackageRunner::new(&package, &host, &cluster_agents::AgentOptions::default());
//! let epoch = 7;
//! match runner.start(epoch).await {
//!     Ok(outcomes) => println!("started {} resources", outcomes.len()),
//!     Err(error) => eprintln!("{error}"),
//! }
//! # }
//! ```

mod agent;
pub mod conformance;
mod filesystem;
mod ip;
mod observed;
mod ocf;
mod process;
pub mod promotion;
mod runner;
mod status;
mod stop_time;

use std::path::PathBuf;
use std::sync::Arc;

use cluster_host::Host;
use cluster_package::{ResourceDef, ResourceKind};

pub use agent::{timed, Action, ActionContext, Agent, MonitorState};
pub use observed::ActionObserver;
pub use ocf::DEFAULT_OCF_ROOT;
pub use runner::{parse_promotion_score, PackageRunner, ProbeResult, ResourceFailure, ResourceOutcome, RunError};
pub use status::{AgentError, OcfStatus};
pub use stop_time::{longest_package_stop, longest_stop, SlowStop};

/// Settings shared by every agent of a node.
#[derive(Clone)]
pub struct AgentOptions {
    /// `OCF_ROOT` for `provider:type` agents.
    pub ocf_root: PathBuf,
    /// Told about every action of every agent built with these options (metrics).
    pub observer: Option<Arc<dyn ActionObserver>>,
    /// This node's name (`OCF_RESKEY_CRM_meta_on_node`).
    pub node: Option<String>,
    /// Where the `crm_master` / `crm_attribute` stand-in lives (`bin/`) and where promotion scores
    /// land (`scores/`): see [`promotion`]. `None`: agents' scores are not collected.
    pub promotion_dir: Option<PathBuf>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions { ocf_root: PathBuf::from(DEFAULT_OCF_ROOT), observer: None, node: None, promotion_dir: None }
    }
}

impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("ocf_root", &self.ocf_root)
            .field("observer", &self.observer.is_some())
            .field("node", &self.node)
            .field("promotion_dir", &self.promotion_dir)
            .finish()
    }
}

/// The agent for a resource, with default options.
pub fn build_agent(resource: &ResourceDef, host: &Host) -> Box<dyn Agent> {
    build_agent_with(resource, host, &AgentOptions::default())
}

/// The agent for a resource: the one factory that picks a backend.
pub fn build_agent_with(resource: &ResourceDef, host: &Host, options: &AgentOptions) -> Box<dyn Agent> {
    let agent: Box<dyn Agent> = match &resource.kind {
        ResourceKind::Ip(params) => Box::new(ip::IpAgent::new(&resource.name, params, host)),
        ResourceKind::Filesystem(params) => Box::new(filesystem::FilesystemAgent::new(&resource.name, params, host)),
        ResourceKind::Process(params) => Box::new(process::ProcessAgent::new(&resource.name, params, host)),
        ResourceKind::Ocf(params) => Box::new(ocf::OcfAgent::new(&resource.name, params, host, &options.ocf_root)),
    };
    match &options.observer {
        Some(observer) => Box::new(observed::ObservedAgent { inner: agent, observer: observer.clone() }),
        None => agent,
    }
}

#[cfg(test)]
mod tests;
