//! Raw link-layer packets: ARP probes and gratuitous ARP over `AF_PACKET`, unsolicited neighbour
//! advertisements over a raw ICMPv6 socket. Sockets are opened on the calling thread (its namespace).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::net::NetError;

const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

fn io_failure(action: String, error: std::io::Error) -> NetError {
    if error.kind() == std::io::ErrorKind::PermissionDenied {
        NetError::PermissionDenied { action }
    } else {
        NetError::Failed { action, message: error.to_string().to_lowercase() }
    }
}

/// An `AF_PACKET`/`SOCK_DGRAM` socket for ARP, bound to one interface, non-blocking.
fn arp_socket(interface_index: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let address = link_address(interface_index, [0; 6]);
    // SAFETY: `address` is a valid sockaddr_ll and the length passed is its size.
    let result = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

fn link_address(interface_index: u32, destination: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = ETH_P_ARP.to_be();
    address.sll_ifindex = interface_index as i32;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&destination);
    address
}

fn arp_packet(
    operation: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> [u8; 28] {
    let mut packet = [0u8; 28];
    packet[0..2].copy_from_slice(&1u16.to_be_bytes()); // ethernet
    packet[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // ipv4
    packet[4] = 6;
    packet[5] = 4;
    packet[6..8].copy_from_slice(&operation.to_be_bytes());
    packet[8..14].copy_from_slice(&sender_mac);
    packet[14..18].copy_from_slice(&sender_ip.octets());
    packet[18..24].copy_from_slice(&target_mac);
    packet[24..28].copy_from_slice(&target_ip.octets());
    packet
}

fn send_broadcast(socket: &OwnedFd, interface_index: u32, packet: &[u8]) -> std::io::Result<()> {
    let destination = link_address(interface_index, [0xff; 6]);
    // SAFETY: `packet` and `destination` are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&destination as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// RFC 5227 probe: two ARP requests with sender 0.0.0.0, then listen until `timeout` for anyone claiming
/// `address` (a reply, or a request whose sender address is `address`).
pub(crate) async fn arp_probe(
    interface: &str,
    interface_index: u32,
    own_mac: [u8; 6],
    address: Ipv4Addr,
    timeout: Duration,
) -> Result<Option<[u8; 6]>, NetError> {
    let action = format!("probe {address} on {interface}");
    let socket = arp_socket(interface_index).map_err(|error| io_failure(action.clone(), error))?;
    // SAFETY: `socket` is an OwnedFd: its descriptor is valid, stays open and is the same for the whole
    // lifetime of the AsyncFd, which owns it.
    let socket = unsafe { AsyncFd::register(socket) }.map_err(|error| io_failure(action.clone(), error.into()))?;
    let probe = arp_packet(ARP_REQUEST, own_mac, Ipv4Addr::UNSPECIFIED, [0; 6], address);
    let deadline = tokio::time::Instant::now() + timeout;
    let probes = 2u32;
    let mut sent = 0u32;
    let mut next_probe = tokio::time::Instant::now();
    loop {
        if sent < probes && tokio::time::Instant::now() >= next_probe {
            send_broadcast(socket.get_ref(), interface_index, &probe)
                .map_err(|error| io_failure(action.clone(), error))?;
            sent += 1;
            next_probe = tokio::time::Instant::now() + timeout / (probes + 1);
        }
        let wake = if sent < probes { next_probe.min(deadline) } else { deadline };
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        let readable = tokio::time::timeout_at(wake, socket.readable()).await;
        let Ok(guard) = readable else { continue };
        let mut guard = guard.map_err(|error| io_failure(action.clone(), error))?;
        let mut buffer = [0u8; 64];
        // SAFETY: `buffer` is valid for writes of its length.
        let received = unsafe { libc::recv(socket.get_ref().as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if received < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(io_failure(action, error));
        }
        let packet = &buffer[..received as usize];
        if packet.len() < 28 || packet[0..2] != [0, 1] || packet[2..4] != [8, 0] {
            continue;
        }
        let operation = u16::from_be_bytes([packet[6], packet[7]]);
        let mut sender_mac = [0u8; 6];
        sender_mac.copy_from_slice(&packet[8..14]);
        let sender_ip = Ipv4Addr::new(packet[14], packet[15], packet[16], packet[17]);
        if sender_mac == own_mac || sender_ip != address {
            continue;
        }
        if operation == ARP_REPLY || operation == ARP_REQUEST {
            return Ok(Some(sender_mac));
        }
    }
}

/// One gratuitous ARP request (sender and target address both `address`), broadcast.
pub(crate) fn gratuitous_arp(
    interface: &str,
    interface_index: u32,
    own_mac: [u8; 6],
    address: Ipv4Addr,
) -> Result<(), NetError> {
    let action = format!("send gratuitous arp for {address} on {interface}");
    let socket = arp_socket(interface_index).map_err(|error| io_failure(action.clone(), error))?;
    let request = arp_packet(ARP_REQUEST, own_mac, address, [0xff; 6], address);
    send_broadcast(&socket, interface_index, &request).map_err(|error| io_failure(action.clone(), error))?;
    // A reply-form announcement too, as send_arp does: some stacks only update on replies.
    let reply = arp_packet(ARP_REPLY, own_mac, address, own_mac, address);
    send_broadcast(&socket, interface_index, &reply).map_err(|error| io_failure(action, error))
}

/// One unsolicited neighbour advertisement (override flag, target link-layer option) to ff02::1.
/// The address must not be tentative (it is the source address).
pub(crate) fn unsolicited_neighbour_advertisement(
    interface: &str,
    interface_index: u32,
    own_mac: [u8; 6],
    address: Ipv6Addr,
) -> Result<(), NetError> {
    let action = format!("send unsolicited neighbour advertisement for {address} on {interface}");
    let fail = |error: std::io::Error| io_failure(action.clone(), error);
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(fail)?;
    socket.set_multicast_hops_v6(255).map_err(fail)?;
    socket.set_unicast_hops_v6(255).map_err(fail)?;
    socket.set_multicast_if_v6(interface_index).map_err(fail)?;
    socket.set_multicast_loop_v6(false).map_err(fail)?;
    let source = SocketAddrV6::new(address, 0, 0, if is_link_local(address) { interface_index } else { 0 });
    socket.bind(&source.into()).map_err(fail)?;
    let mut packet = [0u8; 32];
    packet[0] = 136; // neighbour advertisement
    packet[1] = 0;
    // checksum (bytes 2..4) is filled in by the kernel for raw ICMPv6 sockets
    packet[4] = 0x20; // override, not solicited, not router
    packet[8..24].copy_from_slice(&address.octets());
    packet[24] = 2; // target link-layer address option
    packet[25] = 1; // length in units of 8 bytes
    packet[26..32].copy_from_slice(&own_mac);
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, interface_index);
    socket.send_to(&packet, &all_nodes.into()).map_err(fail)?;
    Ok(())
}

fn is_link_local(address: Ipv6Addr) -> bool {
    address.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_packet_layout_matches_rfc_826() {
        let packet = arp_packet(
            ARP_REQUEST,
            [2, 0, 0, 0, 0, 1],
            Ipv4Addr::new(192, 0, 2, 10),
            [0xff; 6],
            Ipv4Addr::new(192, 0, 2, 10),
        );
        assert_eq!(&packet[0..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&packet[8..14], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&packet[14..18], &[192, 0, 2, 10]);
        assert_eq!(&packet[24..28], &[192, 0, 2, 10]);
    }
}
