//! Recovering where a redirected connection was going (`SO_ORIGINAL_DST`), for IPv4 and IPv6.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::socket::{getsockopt, sockopt};

/// The address the client dialled before nftables redirected it to us.
///
/// A connection accepted on a dual-stack socket may be IPv4 (shown as `::ffff:a.b.c.d`);
/// conntrack keeps its tuple as IPv4, so the IPv4 option is asked first for those.
pub fn original_dst(sock: &impl AsFd, peer: SocketAddr) -> io::Result<SocketAddr> {
    let fd = sock.as_fd();
    let (first, second): (Getter, Getter) = if peer.ip().to_canonical().is_ipv4() {
        (get_v4, get_v6)
    } else {
        (get_v6, get_v4)
    };
    first(fd)
        .or_else(|e| second(fd).map_err(|_| e))
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
}

type Getter = fn(BorrowedFd<'_>) -> io::Result<SocketAddr>;

fn get_v4(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let sa = getsockopt(&fd, sockopt::OriginalDst)?;
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sa.sin_port)))
}

fn get_v6(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let sa = getsockopt(&fd, sockopt::Ip6tOriginalDst)?;
    let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
    Ok(SocketAddr::new(IpAddr::V6(ip), u16::from_be(sa.sin6_port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_destination() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        // Without conntrack the kernel answers an error; with conntrack but no NAT it
        // reports the address actually dialled. Never anything else.
        if let Ok(a) = original_dst(&s, peer) {
            assert_eq!(a, addr);
        }
    }
}
