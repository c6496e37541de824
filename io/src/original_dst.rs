//! Where a redirected connection was going: `SO_ORIGINAL_DST`.
//!
//! In transparent mode, iptables `REDIRECT` rules send the application's
//! connections to Needle's ports; the kernel's connection tracking still
//! remembers the address the application dialled, and hands it back through
//! the `SO_ORIGINAL_DST` socket option (`IP6T_SO_ORIGINAL_DST` for IPv6).
//! We read it through `nix`, which wraps the system call safely.

use std::io;
use std::net::SocketAddr;

/// The original destination of `stream`, if the kernel redirected it.
///
/// `None` when the connection was not redirected: either connection
/// tracking has no record of it (`ENOENT`, `ENOPROTOOPT` without the
/// conntrack module) or the recorded destination is our own address.
#[cfg(target_os = "linux")]
pub(crate) fn original_dst(stream: &tokio::net::TcpStream) -> io::Result<Option<SocketAddr>> {
    use nix::errno::Errno;
    use nix::sys::socket::{getsockopt, sockopt};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    let local = stream.local_addr()?;
    let found = match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).map(|sa| {
            let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
            SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sa.sin_port)))
        }),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst).map(|sa| {
            let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
            SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sa.sin6_port),
                sa.sin6_flowinfo,
                sa.sin6_scope_id,
            ))
        }),
    };
    match found {
        Ok(dst) if dst == local => Ok(None),
        Ok(dst) => Ok(Some(dst)),
        Err(Errno::ENOENT | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Other platforms have no `SO_ORIGINAL_DST`: never redirected.
#[cfg(not(target_os = "linux"))]
pub(crate) fn original_dst(_stream: &tokio::net::TcpStream) -> io::Result<Option<SocketAddr>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain loopback connection was not redirected: no original
    /// destination, and no error, with or without conntrack loaded.
    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&accepted).unwrap(), None);
    }
}
