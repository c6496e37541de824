//! Application protocols negotiated between proxies.

use core::fmt;

/// What the two proxies carry inside the TLS connection, agreed by ALPN.
///
/// Both sides must agree before any byte of application data flows: a
/// client that wants to multiplex HTTP over one connection must not reach a
/// server that expects one opaque stream. The protocol IDs are private to
/// Needle (`needle/...`) so they never collide with the application's own
/// ALPN, which travels untouched inside the opaque or HTTP stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Alpn {
    /// Multiplexed HTTP: HTTP/2 between the proxies, whatever the
    /// application spoke (`needle/h2`).
    H2,
    /// One opaque byte stream, forwarded as is (`needle/opaque`).
    Opaque,
}

impl Alpn {
    /// Every protocol, in the server's order of preference.
    pub const ALL: [Alpn; 2] = [Alpn::H2, Alpn::Opaque];

    /// The ALPN protocol ID on the wire.
    pub const fn protocol_id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"needle/h2",
            Alpn::Opaque => b"needle/opaque",
        }
    }

    /// The protocol with this wire ID, if it is one of Needle's.
    pub fn from_protocol_id(id: &[u8]) -> Option<Alpn> {
        Alpn::ALL.into_iter().find(|a| a.protocol_id() == id)
    }

    pub(crate) fn wire_list(list: &[Alpn]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.protocol_id().to_vec()).collect()
    }
}

impl fmt::Display for Alpn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Alpn::H2 => "needle/h2",
            Alpn::Opaque => "needle/opaque",
        })
    }
}
