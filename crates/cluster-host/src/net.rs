//! Network operations: links, addresses, duplicate probes and announcements.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// State of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// Hardware address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
}

/// One address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressInfo {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// IPv6 duplicate address detection still running.
    pub tentative: bool,
    /// IPv6 duplicate address detection found another holder.
    pub dad_failed: bool,
}

/// A network operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The interface does not exist.
    #[error("interface {interface} not found")]
    NoSuchInterface {
        /// The interface.
        interface: String,
    },
    /// The address is already on the interface.
    #[error("failed to add {address}/{prefix_len} to {interface}: address already present")]
    AddressExists {
        /// The address.
        address: IpAddr,
        /// Its prefix length.
        prefix_len: u8,
        /// The interface.
        interface: String,
    },
    /// Not allowed (not root, or no `CAP_NET_ADMIN`/`CAP_NET_RAW`).
    #[error("failed to {action}: permission denied")]
    PermissionDenied {
        /// What was being done.
        action: String,
    },
    /// Any other failure.
    #[error("failed to {action}: {message}")]
    Failed {
        /// What was being done.
        action: String,
        /// Why it failed.
        message: String,
    },
}

/// Links and addresses of the host (in the calling thread's network namespace).
#[async_trait::async_trait]
pub trait Network: Send + Sync {
    /// State of `interface`.
    async fn link(&self, interface: &str) -> Result<LinkInfo, NetError>;
    /// Addresses on `interface`.
    async fn addresses(&self, interface: &str) -> Result<Vec<AddressInfo>, NetError>;
    /// Add an address. `skip_dad` adds an IPv6 address without duplicate address detection (`IFA_F_NODAD`).
    /// An address already present is [`NetError::AddressExists`].
    async fn add_address(
        &self,
        interface: &str,
        address: IpAddr,
        prefix_len: u8,
        skip_dad: bool,
    ) -> Result<(), NetError>;
    /// Remove an address; an address that is not there is not an error.
    async fn remove_address(&self, interface: &str, address: IpAddr, prefix_len: u8) -> Result<(), NetError>;
    /// ARP-probe the segment for `address` (RFC 5227 probe, sender 0.0.0.0) and wait up to `timeout` for
    /// an answer. Returns the hardware address of another holder, if any.
    async fn probe_ipv4_duplicate(
        &self,
        interface: &str,
        address: Ipv4Addr,
        timeout: Duration,
    ) -> Result<Option<[u8; 6]>, NetError>;
    /// Send one announcement: a gratuitous ARP (IPv4) or an unsolicited neighbour advertisement (IPv6).
    async fn announce(&self, interface: &str, address: IpAddr) -> Result<(), NetError>;
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}
