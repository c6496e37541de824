//! `SO_ORIGINAL_DST` on a connection iptables really redirected.
//!
//! A throwaway network namespace gets a `nat OUTPUT` `REDIRECT` rule that
//! sends a client's connection for a backend's port to the proxy's port
//! instead, as transparent mode's rules do. Inside it the test checks that
//! `Connection::original_dst` names the backend the client dialled, and
//! that `proxy::Port` (with no configured target) forwards the connection
//! there.
//!
//! It needs root, `ip` and `iptables` (`scripts/install-test-deps.sh`, run
//! by `.ci/run`). Where the machine forbids namespaces or iptables is
//! absent it prints why and passes without checking anything.
#![cfg(target_os = "linux")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use needle_io::net::{Connection, Network, TokioNet};
use needle_io::proxy::{Port, PortConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Runs a command, returning its stderr on failure.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace deleted when dropped, also when the test panics.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let name = format!(
            "needle-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        run("ip", &["netns", "add", &name])?;
        Ok(Netns { name })
    }

    /// Runs `program args` inside the namespace.
    fn exec(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "delete", &self.name]) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

fn skip(why: &str) {
    println!("SKIPPED a_redirected_connection_reports_where_it_was_going: {why}");
}

#[test]
fn a_redirected_connection_reports_where_it_was_going() {
    for tool in ["ip", "iptables"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return skip(&format!(
                "`{tool}` is not installed (scripts/install-test-deps.sh installs it)"
            ));
        }
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => return skip(&format!("cannot create a network namespace: {e}")),
    };
    if let Err(e) = ns.exec("ip", &["link", "set", "lo", "up"]) {
        return skip(&format!("cannot bring up lo in the namespace: {e}"));
    }
    if let Err(e) = ns.exec("iptables", &["-t", "nat", "-L", "OUTPUT", "-n"]) {
        return skip(&format!("iptables nat table unavailable: {e}"));
    }

    // Everything below runs on one thread that joined the namespace, on a
    // current-thread runtime, so every socket lives in the namespace.
    let path = format!("/run/netns/{}", ns.name);
    let ns_name = ns.name.clone();
    let outcome = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), scenario(&ns_name))
                    .await
                    .expect("the scenario timed out")
            })
    })
    .join();
    drop(ns);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

async fn scenario(ns: &str) {
    // The backend the application means to reach; it records who connects
    // and answers with what it read, upper-cased.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let p2 = peers.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, peer)) = backend.accept().await {
            p2.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got).await;
                let _ = conn.write_all(&got.to_ascii_uppercase()).await;
                let _ = conn.shutdown().await;
            });
        }
    });

    let listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();

    // Transparent mode's rule, narrowed to the client's source address so
    // the proxy's own connection to the backend is not redirected back.
    let rule = [
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-s",
        "127.0.0.2",
        "-d",
        "127.0.0.1",
        "--dport",
        &backend_addr.port().to_string(),
        "-j",
        "REDIRECT",
        "--to-ports",
        &proxy_addr.port().to_string(),
    ]
    .map(str::to_owned);
    let mut args = vec!["netns", "exec", ns, "iptables"];
    args.extend(rule.iter().map(String::as_str));
    run("ip", &args).expect("add the REDIRECT rule");

    // A direct connection to the proxy was not redirected.
    let direct = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    assert_eq!(accepted.original_dst().unwrap(), None);
    drop((direct, accepted));

    // The client dials the backend; the kernel hands the connection to the
    // proxy, which is told where it was going.
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(CLIENT_IP), 0))
        .unwrap();
    let mut client = socket.connect(backend_addr).await.unwrap();
    let (conn, peer) = listener.accept().await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(CLIENT_IP));
    assert_eq!(conn.local_addr().unwrap(), proxy_addr);
    assert_eq!(
        conn.original_dst().unwrap(),
        Some(backend_addr),
        "SO_ORIGINAL_DST must name the address the client dialled"
    );
    assert!(
        peers.lock().unwrap().is_empty(),
        "the client reached the backend directly"
    );

    // With no configured target, the port forwards to that destination.
    let port = Port::new(TokioNet, PortConfig::default());
    let served = tokio::spawn(async move { port.serve(conn).await });
    client.write_all(b"\x00redirected bytes").await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"\x00REDIRECTED BYTES");
    let served = served
        .await
        .unwrap()
        .expect("the port forwarded the connection");
    assert_eq!(served.dst, backend_addr);
    let peers = peers.lock().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(
        peers[0].ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "the backend was reached by the proxy, not by the client"
    );
}
