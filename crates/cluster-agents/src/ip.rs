//! The `ip` agent: a virtual IP address on an interface, with a duplicate probe before adding and
//! gratuitous ARP / unsolicited neighbour advertisements after.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use cluster_host::{format_mac, Host, NetError};
use cluster_package::IpResource;

use crate::agent::{meta_data_xml, ActionContext, Agent, MonitorState};
use crate::status::AgentError;

/// How long IPv6 duplicate address detection may take before start gives up waiting.
const DAD_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct IpAgent {
    name: String,
    params: IpResource,
    host: Host,
    announcer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl IpAgent {
    pub(crate) fn new(name: &str, params: &IpResource, host: &Host) -> Self {
        IpAgent { name: name.to_string(), params: params.clone(), host: host.clone(), announcer: Mutex::new(None) }
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.params.address, self.params.prefix_len)
    }

    fn stop_announcer(&self) {
        let mut announcer = self.announcer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(task) = announcer.take() {
            task.abort();
        }
    }

    /// Our address on the interface: `Some(tentative, dad_failed)`; an error if it is there with another prefix.
    async fn present(&self) -> Result<Option<(bool, bool)>, AgentError> {
        let addresses = self.host.network.addresses(&self.params.interface).await?;
        for info in addresses {
            if info.address != self.params.address {
                continue;
            }
            if info.prefix_len != self.params.prefix_len {
                return Err(AgentError::configured(format!(
                    "{} is already on {} with prefix /{} (resource {} wants /{})",
                    self.params.address, self.params.interface, info.prefix_len, self.name, self.params.prefix_len
                )));
            }
            return Ok(Some((info.tentative, info.dad_failed)));
        }
        Ok(None)
    }

    async fn wait_for_dad(&self) -> Result<(), AgentError> {
        let deadline = self.host.clock.now() + DAD_WAIT;
        loop {
            match self.present().await? {
                Some((_, true)) => {
                    let _ = self
                        .host
                        .network
                        .remove_address(&self.params.interface, self.params.address, self.params.prefix_len)
                        .await;
                    return Err(AgentError::generic(format!(
                        "duplicate address {} on {}: duplicate address detection failed, another host holds it",
                        self.params.address, self.params.interface
                    )));
                }
                Some((false, false)) => return Ok(()),
                Some((true, false)) if self.host.clock.now() < deadline => {
                    self.host.clock.sleep(Duration::from_millis(50)).await
                }
                Some((true, false)) => {
                    return Err(AgentError::generic(format!(
                        "{} on {} still tentative after {:?}",
                        self.cidr(),
                        self.params.interface,
                        DAD_WAIT
                    )))
                }
                None => {
                    return Err(AgentError::generic(format!(
                        "{} vanished from {} during duplicate address detection",
                        self.cidr(),
                        self.params.interface
                    )))
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Agent for IpAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "ip"
    }

    async fn validate(&self) -> Result<(), AgentError> {
        let max = if self.params.address.is_ipv4() { 32 } else { 128 };
        if self.params.prefix_len > max {
            return Err(AgentError::configured(format!(
                "resource {}: prefix /{} is longer than {max}",
                self.name, self.params.prefix_len
            )));
        }
        if self.params.interface.is_empty() || self.params.interface.len() > 15 {
            return Err(AgentError::configured(format!(
                "resource {}: bad interface name {:?}",
                self.name, self.params.interface
            )));
        }
        if self.params.address.is_unspecified()
            || self.params.address.is_multicast()
            || self.params.address.is_loopback()
        {
            return Err(AgentError::configured(format!(
                "resource {}: {} is not a usable unicast address",
                self.name, self.params.address
            )));
        }
        Ok(())
    }

    async fn start(&self, context: &ActionContext) -> Result<(), AgentError> {
        self.validate().await?;
        let interface = &self.params.interface;
        let link = self.host.network.link(interface).await?;
        if !link.up {
            return Err(AgentError::generic(format!("cannot add {} to {interface}: link is down", self.cidr())));
        }
        tracing::info!(resource = %self.name, epoch = context.epoch, address = %self.cidr(), %interface, "starting ip");
        match self.present().await? {
            Some((_, false)) => {
                // Already there (idempotent start, or adopted after a daemon restart): wait out DAD if any.
                if self.params.address.is_ipv6() {
                    self.wait_for_dad().await?;
                }
            }
            Some((_, true)) | None => {
                if self.present().await?.is_some() {
                    // a stale address that failed DAD: remove before trying again
                    self.host.network.remove_address(interface, self.params.address, self.params.prefix_len).await?;
                }
                let skip_dad = !self.params.check_duplicate;
                if let (IpAddr::V4(address), true) = (self.params.address, self.params.check_duplicate) {
                    if let Some(mac) =
                        self.host.network.probe_ipv4_duplicate(interface, address, self.params.probe_timeout).await?
                    {
                        return Err(AgentError::generic(format!(
                            "duplicate address {address} on {interface}: answered by {}",
                            format_mac(&mac)
                        )));
                    }
                }
                match self
                    .host
                    .network
                    .add_address(interface, self.params.address, self.params.prefix_len, skip_dad)
                    .await
                {
                    Ok(()) | Err(NetError::AddressExists { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
                if self.params.address.is_ipv6() && self.params.check_duplicate {
                    self.wait_for_dad().await?;
                }
            }
        }
        // First announcement now (so neighbours switch before start returns), the rest in the background.
        if self.params.announce_count > 0 {
            self.host.network.announce(interface, self.params.address).await?;
        }
        self.stop_announcer();
        if self.params.announce_count > 1 {
            let network = self.host.network.clone();
            let clock = self.host.clock.clone();
            let (interface, address) = (interface.clone(), self.params.address);
            let (count, interval) = (self.params.announce_count, self.params.announce_interval);
            let task = tokio::spawn(async move {
                for _ in 1..count {
                    clock.sleep(interval).await;
                    if let Err(error) = network.announce(&interface, address).await {
                        tracing::warn!(%error, "announcement failed");
                    }
                }
            });
            *self.announcer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
        }
        Ok(())
    }

    async fn stop(&self, context: &ActionContext) -> Result<(), AgentError> {
        tracing::info!(resource = %self.name, epoch = context.epoch, address = %self.cidr(), "stopping ip");
        self.stop_announcer();
        // Removes exactly this address/prefix; a missing address or interface is already stopped.
        self.host.network.remove_address(&self.params.interface, self.params.address, self.params.prefix_len).await?;
        Ok(())
    }

    async fn monitor(&self, _context: &ActionContext) -> Result<MonitorState, AgentError> {
        let link = match self.host.network.link(&self.params.interface).await {
            Ok(link) => link,
            Err(NetError::NoSuchInterface { .. }) => return Ok(MonitorState::NotRunning),
            Err(error) => return Err(error.into()),
        };
        match self.present().await? {
            None => Ok(MonitorState::NotRunning),
            Some((_, true)) => Err(AgentError::generic(format!(
                "{} on {}: duplicate address detection failed",
                self.cidr(),
                self.params.interface
            ))),
            Some(_) if !link.up || !link.lower_up => Err(AgentError::generic(format!(
                "{} is on {} but the link is down",
                self.cidr(),
                self.params.interface
            ))),
            Some(_) => Ok(MonitorState::Running),
        }
    }

    async fn meta_data(&self) -> Result<String, AgentError> {
        Ok(meta_data_xml(
            "ip",
            "virtual IP address managed over rtnetlink",
            &[
                ("address", true, "", "address with prefix, e.g. 192.0.2.10/24"),
                ("interface", true, "", "interface name"),
                ("check_duplicate", false, "true", "probe the segment for a duplicate before adding"),
                ("probe_timeout", false, "50ms", "how long to wait for an answer to the ARP probe"),
                ("announce_count", false, "5", "gratuitous ARPs or unsolicited neighbour advertisements sent"),
                ("announce_interval", false, "200ms", "interval between announcements"),
            ],
        ))
    }
}
