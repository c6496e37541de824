//! `needle init`: the iptables rules that route a pod's traffic through its
//! sidecar, run once by an init container (root, `NET_ADMIN`).
//!
//! - **Inbound**: every TCP connection arriving at the pod (nat
//!   `PREROUTING`) is redirected to the inbound port (4143), except the
//!   ports listed to skip (the admin port 4191 by default, so probes and
//!   scrapes reach it directly).
//! - **Outbound**: every TCP connection the pod opens (nat `OUTPUT`) is
//!   redirected to the outbound port (4140), except the proxy's own (by its
//!   user id: otherwise the proxy's connections would loop back into it),
//!   connections over loopback (the application talking to itself, and the
//!   inbound proxy handing connections to the application), and the ports
//!   listed to skip.
//!
//! The rules live in two chains of their own (`NEEDLE_INBOUND`,
//! `NEEDLE_OUTBOUND`), so applying them twice leaves one copy, and
//! `iptables -t nat -S` shows exactly what Needle added. The proxy learns
//! where each redirected connection was going from `SO_ORIGINAL_DST`.

use std::process::Command;

/// What `needle init` installs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rules {
    pub(crate) proxy_uid: u32,
    pub(crate) inbound_port: u16,
    pub(crate) outbound_port: u16,
    pub(crate) skip_inbound_ports: Vec<u16>,
    pub(crate) skip_outbound_ports: Vec<u16>,
}

impl Rules {
    /// The iptables invocations, in order (arguments after `iptables`).
    pub(crate) fn commands(&self) -> Vec<Vec<String>> {
        let mut cmds: Vec<Vec<String>> = Vec::new();
        let mut add = |args: &[&str]| cmds.push(args.iter().map(|a| a.to_string()).collect());
        let inbound = self.inbound_port.to_string();
        let outbound = self.outbound_port.to_string();
        let uid = self.proxy_uid.to_string();
        // Fresh chains: create (may exist), then empty them.
        for chain in ["NEEDLE_INBOUND", "NEEDLE_OUTBOUND"] {
            add(&["-t", "nat", "-N", chain]);
            add(&["-t", "nat", "-F", chain]);
        }
        for port in &self.skip_inbound_ports {
            add(&[
                "-t",
                "nat",
                "-A",
                "NEEDLE_INBOUND",
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "RETURN",
            ]);
        }
        add(&[
            "-t",
            "nat",
            "-A",
            "NEEDLE_INBOUND",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &inbound,
        ]);
        add(&[
            "-t",
            "nat",
            "-A",
            "NEEDLE_OUTBOUND",
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-j",
            "RETURN",
        ]);
        add(&[
            "-t",
            "nat",
            "-A",
            "NEEDLE_OUTBOUND",
            "-o",
            "lo",
            "-j",
            "RETURN",
        ]);
        for port in &self.skip_outbound_ports {
            add(&[
                "-t",
                "nat",
                "-A",
                "NEEDLE_OUTBOUND",
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "RETURN",
            ]);
        }
        add(&[
            "-t",
            "nat",
            "-A",
            "NEEDLE_OUTBOUND",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &outbound,
        ]);
        // Hook the chains in once (removed first, so re-running does not
        // add a second jump).
        for (hook, chain) in [
            ("PREROUTING", "NEEDLE_INBOUND"),
            ("OUTPUT", "NEEDLE_OUTBOUND"),
        ] {
            add(&["-t", "nat", "-D", hook, "-p", "tcp", "-j", chain]);
            add(&["-t", "nat", "-A", hook, "-p", "tcp", "-j", chain]);
        }
        cmds
    }

    /// Runs the commands with `iptables`; `-N` of an existing chain and
    /// `-D` of a missing jump are expected to fail and are ignored.
    pub(crate) fn apply(&self, iptables: &str) -> Result<(), String> {
        for args in self.commands() {
            let tolerated = args.iter().any(|a| a == "-N" || a == "-D");
            let output = Command::new(iptables)
                .args(&args)
                .output()
                .map_err(|e| format!("running {iptables}: {e} (is iptables installed?)"))?;
            if !output.status.success() && !tolerated {
                return Err(format!(
                    "{iptables} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_skip_the_proxy_loopback_and_listed_ports() {
        let rules = Rules {
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            skip_inbound_ports: vec![4191],
            skip_outbound_ports: vec![25],
        };
        let text: Vec<String> = rules.commands().iter().map(|c| c.join(" ")).collect();
        let pos = |needle: &str| {
            text.iter()
                .position(|c| c == needle)
                .unwrap_or_else(|| panic!("missing {needle:?} in {text:#?}"))
        };
        let skip_admin = pos("-t nat -A NEEDLE_INBOUND -p tcp --dport 4191 -j RETURN");
        let redirect_in = pos("-t nat -A NEEDLE_INBOUND -p tcp -j REDIRECT --to-ports 4143");
        let skip_uid = pos("-t nat -A NEEDLE_OUTBOUND -m owner --uid-owner 2102 -j RETURN");
        let skip_lo = pos("-t nat -A NEEDLE_OUTBOUND -o lo -j RETURN");
        let skip_smtp = pos("-t nat -A NEEDLE_OUTBOUND -p tcp --dport 25 -j RETURN");
        let redirect_out = pos("-t nat -A NEEDLE_OUTBOUND -p tcp -j REDIRECT --to-ports 4140");
        // Exceptions come before the catch-all redirect in each chain.
        assert!(skip_admin < redirect_in);
        assert!(skip_uid < redirect_out && skip_lo < redirect_out && skip_smtp < redirect_out);
        // Each jump is removed before it is added: re-running is harmless.
        let del = pos("-t nat -D OUTPUT -p tcp -j NEEDLE_OUTBOUND");
        let addj = pos("-t nat -A OUTPUT -p tcp -j NEEDLE_OUTBOUND");
        assert!(del < addj);
        pos("-t nat -A PREROUTING -p tcp -j NEEDLE_INBOUND");
    }
}
