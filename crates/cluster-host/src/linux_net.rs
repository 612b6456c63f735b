//! Linux network operations: rtnetlink for links and addresses, raw sockets for probes and announcements.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

use crate::net::{AddressInfo, LinkInfo, NetError, Network};
use crate::raw_packets;

/// Network operations on the real kernel, in the calling thread's network namespace.
///
/// A netlink socket is opened per call, on the calling thread, so the handle can be shared freely and a
/// thread that entered another namespace acts inside it.
#[derive(Debug, Default, Clone)]
pub struct LinuxNetwork {
    _private: (),
}

impl LinuxNetwork {
    /// A new handle.
    pub fn new() -> Self {
        LinuxNetwork { _private: () }
    }
}

fn netlink_error(action: String, error: rtnetlink::Error) -> NetError {
    if let rtnetlink::Error::NetlinkError(message) = &error {
        let io = message.to_io();
        if io.raw_os_error() == Some(libc::EPERM) || io.raw_os_error() == Some(libc::EACCES) {
            return NetError::PermissionDenied { action };
        }
        return NetError::Failed { action, message: io.to_string().to_lowercase() };
    }
    NetError::Failed { action, message: error.to_string().to_lowercase() }
}

fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io().raw_os_error(),
        _ => None,
    }
}

struct Connection {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn connect(action: &str) -> Result<Connection, NetError> {
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|error| NetError::Failed { action: action.to_string(), message: error.to_string().to_lowercase() })?;
    let task = tokio::spawn(connection);
    Ok(Connection { handle, task })
}

/// Every address message of the link `index` (the kernel's filter is not trusted alone: callers
/// check the index again).
async fn address_messages(connection: &Connection, index: u32, action: &str) -> Result<Vec<AddressMessage>, NetError> {
    connection
        .handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|error| netlink_error(action.to_owned(), error))
}

async fn link_message(connection: &Connection, interface: &str) -> Result<LinkMessage, NetError> {
    let mut links = connection.handle.link().get().match_name(interface.to_string()).execute();
    match links.try_next().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(NetError::NoSuchInterface { interface: interface.to_string() }),
        Err(error) if errno_of(&error) == Some(libc::ENODEV) => {
            Err(NetError::NoSuchInterface { interface: interface.to_string() })
        }
        Err(error) => Err(netlink_error(format!("read link {interface}"), error)),
    }
}

fn link_info(message: &LinkMessage) -> LinkInfo {
    let mac = message.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Address(bytes) if bytes.len() == 6 => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(bytes);
            Some(mac)
        }
        _ => None,
    });
    LinkInfo {
        index: message.header.index,
        up: message.header.flags.contains(LinkFlags::Up),
        lower_up: message.header.flags.contains(LinkFlags::LowerUp),
        mac,
    }
}

fn address_info(message: &AddressMessage) -> Option<AddressInfo> {
    // IFA_LOCAL is the interface's own address for IPv4 (IFA_ADDRESS may be the peer); IPv6 has only IFA_ADDRESS.
    let local = message.attributes.iter().find_map(|attribute| match attribute {
        AddressAttribute::Local(address) => Some(*address),
        _ => None,
    });
    let address = local.or_else(|| {
        message.attributes.iter().find_map(|attribute| match attribute {
            AddressAttribute::Address(address) => Some(*address),
            _ => None,
        })
    })?;
    let flags = message.attributes.iter().find_map(|attribute| match attribute {
        AddressAttribute::Flags(flags) => Some(*flags),
        _ => None,
    });
    let (tentative, dad_failed) = match flags {
        Some(flags) => (flags.contains(AddressFlags::Tentative), flags.contains(AddressFlags::Dadfailed)),
        None => (
            message.header.flags.contains(AddressHeaderFlags::Tentative),
            message.header.flags.contains(AddressHeaderFlags::Dadfailed),
        ),
    };
    Some(AddressInfo { address, prefix_len: message.header.prefix_len, tentative, dad_failed })
}

#[async_trait::async_trait]
impl Network for LinuxNetwork {
    async fn link(&self, interface: &str) -> Result<LinkInfo, NetError> {
        let connection = connect(&format!("read link {interface}"))?;
        Ok(link_info(&link_message(&connection, interface).await?))
    }

    async fn addresses(&self, interface: &str) -> Result<Vec<AddressInfo>, NetError> {
        let action = format!("list addresses of {interface}");
        let connection = connect(&action)?;
        let index = link_message(&connection, interface).await?.header.index;
        let messages = address_messages(&connection, index, &action).await?;
        Ok(messages.iter().filter(|message| message.header.index == index).filter_map(address_info).collect())
    }

    async fn add_address(
        &self,
        interface: &str,
        address: IpAddr,
        prefix_len: u8,
        skip_dad: bool,
    ) -> Result<(), NetError> {
        let action = format!("add {address}/{prefix_len} to {interface}");
        let connection = connect(&action)?;
        let index = link_message(&connection, interface).await?.header.index;
        let mut request = connection.handle.address().add(index, address, prefix_len);
        if skip_dad && address.is_ipv6() {
            let message = request.message_mut();
            message.header.flags |= AddressHeaderFlags::Nodad;
            message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(error) if errno_of(&error) == Some(libc::EEXIST) => {
                Err(NetError::AddressExists { address, prefix_len, interface: interface.to_string() })
            }
            Err(error) => Err(netlink_error(action, error)),
        }
    }

    async fn remove_address(&self, interface: &str, address: IpAddr, prefix_len: u8) -> Result<(), NetError> {
        let action = format!("remove {address}/{prefix_len} from {interface}");
        let connection = connect(&action)?;
        let index = match link_message(&connection, interface).await {
            Ok(message) => message.header.index,
            // No interface, no address: stop is idempotent.
            Err(NetError::NoSuchInterface { .. }) => return Ok(()),
            Err(error) => return Err(error),
        };
        let messages = address_messages(&connection, index, &action).await?;
        for message in messages {
            let Some(info) = address_info(&message) else {
                continue;
            };
            if message.header.index != index || info.address != address || info.prefix_len != prefix_len {
                continue;
            }
            match connection.handle.address().del(message).execute().await {
                Ok(()) => {}
                Err(error) if errno_of(&error) == Some(libc::EADDRNOTAVAIL) => {}
                Err(error) => return Err(netlink_error(action, error)),
            }
        }
        Ok(())
    }

    async fn probe_ipv4_duplicate(
        &self,
        interface: &str,
        address: Ipv4Addr,
        timeout: Duration,
    ) -> Result<Option<[u8; 6]>, NetError> {
        let link = self.link(interface).await?;
        let mac = link.mac.ok_or_else(|| NetError::Failed {
            action: format!("probe {address} on {interface}"),
            message: "interface has no ethernet address".to_string(),
        })?;
        raw_packets::arp_probe(interface, link.index, mac, address, timeout).await
    }

    async fn announce(&self, interface: &str, address: IpAddr) -> Result<(), NetError> {
        let link = self.link(interface).await?;
        let mac = link.mac.ok_or_else(|| NetError::Failed {
            action: format!("announce {address} on {interface}"),
            message: "interface has no ethernet address".to_string(),
        })?;
        match address {
            IpAddr::V4(address) => raw_packets::gratuitous_arp(interface, link.index, mac, address),
            IpAddr::V6(address) => {
                raw_packets::unsolicited_neighbour_advertisement(interface, link.index, mac, address)
            }
        }
    }
}
