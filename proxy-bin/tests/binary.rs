//! The `needle` binary as an operator runs it: real processes, real
//! sockets on loopback, configuration through flags, environment and
//! files, the admin server, signals, and two sidecars meshing with mTLS.

#[path = "../../core/tests/common/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NEEDLE: &str = env!("CARGO_BIN_EXE_needle");

/// A free loopback port (bound and released; racy only in theory).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A tiny HTTP/1.1 application answering every request with `body` and
/// the value of the request's `needle-client-id` header.
fn app(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end + 4);
                        let caller = head
                            .lines()
                            .find_map(|l| l.strip_prefix("needle-client-id: "))
                            .unwrap_or("none")
                            .to_owned();
                        let text = format!("{body} caller={caller}");
                        let res = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if stream.write_all(res.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP/1.1 request on a fresh connection; the status and body.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: app.test\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A running `needle`, killed when dropped.
struct Needle {
    child: Child,
    admin: SocketAddr,
    outbound: SocketAddr,
    inbound: SocketAddr,
}

impl Needle {
    fn start(sets: &[String], env: &[(&str, &str)]) -> Needle {
        let (outbound, inbound, admin) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(NEEDLE);
        cmd.arg("--set")
            .arg(format!("outbound.listen={outbound}"))
            .arg("--set")
            .arg(format!("inbound.listen={inbound}"))
            .arg("--set")
            .arg(format!("admin.listen={admin}"))
            .arg("--set")
            .arg("shutdown.grace_period=5s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let needle = Needle {
            child,
            admin,
            outbound,
            inbound,
        };
        needle.wait_ready();
        needle
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(self.admin).is_ok()
                && request(self.admin, "GET", "/ready", "").0 == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("needle did not become ready");
    }

    /// Sends `signal` and waits for the exit; the exit status and stderr.
    fn stop(mut self, signal: &str) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.code(), err);
            }
            assert!(
                Instant::now() < deadline,
                "needle did not exit after {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Needle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn runs_proxies_serves_the_admin_api_and_drains_on_sigterm() {
    let app = app("hello");
    let needle = Needle::start(
        &[format!("outbound.target={app}")],
        &[("NEEDLE_PROXY_IDLE_TIMEOUT", "10m")],
    );
    // HTTP through the outbound proxy.
    assert_eq!(
        request(needle.outbound, "GET", "/", ""),
        (200, "hello caller=none".into())
    );
    // Admin: live, config with sources, log level.
    assert_eq!(request(needle.admin, "GET", "/live", "").0, 200);
    let (status, config) = request(needle.admin, "GET", "/config", "");
    assert_eq!(status, 200);
    assert!(
        config.contains(
            "proxy.idle_timeout = \"10m\"  # environment variable NEEDLE_PROXY_IDLE_TIMEOUT"
        ),
        "{config}"
    );
    assert!(
        config.contains(&format!("outbound.target = \"{app}\"  # --set")),
        "{config}"
    );
    assert_eq!(
        request(needle.admin, "GET", "/log-level", ""),
        (200, "info\n".into())
    );
    assert_eq!(
        request(needle.admin, "PUT", "/log-level", "debug,hyper=info"),
        (200, "debug,hyper=info\n".into())
    );
    assert_eq!(request(needle.admin, "PUT", "/log-level", "x=[[").0, 400);
    assert_eq!(
        request(needle.admin, "GET", "/log-level", ""),
        (200, "debug,hyper=info\n".into())
    );
    assert_eq!(
        request(needle.admin, "POST", "/shutdown", "").0,
        404,
        "disabled by default"
    );
    assert_eq!(request(needle.admin, "GET", "/metrics", "").0, 200);
    assert_eq!(request(needle.admin, "GET", "/nope", "").0, 404);

    let (code, log) = needle.stop("-TERM");
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("draining") && log.contains("SIGTERM"), "{log}");
}

#[test]
fn admin_shutdown_when_enabled_stops_the_proxy() {
    let needle = Needle::start(&["admin.enable_shutdown=true".into()], &[]);
    assert_eq!(request(needle.admin, "POST", "/shutdown", "").0, 200);
    let mut needle = needle;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = needle.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_configuration_is_refused_at_start_naming_the_setting() {
    let out = Command::new(NEEDLE)
        .env("NEEDLE_DETECT_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("setting detect.timeout = \"soon\" (from environment variable NEEDLE_DETECT_TIMEOUT): expected a duration"),
        "{err}"
    );

    let dir = temp_dir("check");
    let file = dir.join("needle.toml");
    std::fs::write(&file, "[proxy]\nidle_timeout = \"2m\"\n").unwrap();
    let out = Command::new(NEEDLE)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("proxy.idle_timeout = \"2m\"  # file"),
        "{shown}"
    );
    std::fs::write(&file, "[proxy]\nidle_timout = \"2m\"\n").unwrap();
    let out = Command::new(NEEDLE)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting \"proxy.idle_timout\""));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn init_dry_run_prints_the_rules() {
    let out = Command::new(NEEDLE)
        .args([
            "init",
            "--dry-run",
            "--proxy-uid",
            "2102",
            "--skip-outbound-ports",
            "25,587",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(
        rules.contains("iptables -t nat -A NEEDLE_OUTBOUND -m owner --uid-owner 2102 -j RETURN"),
        "{rules}"
    );
    assert!(
        rules.contains("iptables -t nat -A NEEDLE_OUTBOUND -p tcp --dport 587 -j RETURN"),
        "{rules}"
    );
    assert!(
        rules.contains("iptables -t nat -A NEEDLE_INBOUND -p tcp --dport 4191 -j RETURN"),
        "{rules}"
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("needle-bin-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a workload's credentials; returns the three `--set`s.
fn identity(dir: &Path, ca: &pki::Ca, id: &str) -> Vec<String> {
    let leaf = ca.leaf_valid(id, now() - 3600, now() + 86_400);
    std::fs::write(dir.join("cert.pem"), &leaf.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    vec![
        format!("identity.cert={}", dir.join("cert.pem").display()),
        format!("identity.key={}", dir.join("key.pem").display()),
        format!("identity.trust_bundle={}", dir.join("ca.pem").display()),
    ]
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn two_sidecars_mesh_with_mtls_through_a_discovery_file() {
    // The test CA is valid around the tests' fixed date; these leaves are
    // made valid around now, which the CA's ten years cover.
    let ca = pki::Ca::new("binary mesh CA");
    let app = app("from-api");
    let (web_dir, api_dir) = (temp_dir("web"), temp_dir("api"));

    // The server's sidecar: inbound only matters; mTLS required.
    let mut api_sets = identity(&api_dir, &ca, "spiffe://cluster.local/ns/shop/sa/api");
    api_sets.push("inbound.default_policy=require-mtls".into());
    let api = Needle::start(&api_sets, &[]);

    // The client's sidecar: discovery says the app is meshed, behind the
    // api sidecar's inbound port.
    let discovery = web_dir.join("services.toml");
    std::fs::write(
        &discovery,
        format!(
            "[[service]]\ndst = \"{app}\"\n[[service.backend]]\nname = \"api\"\nendpoint = [{{ addr = \"{app}\", identity = \"spiffe://cluster.local/ns/shop/sa/api\", proxy = \"{}\" }}]\n",
            api.inbound
        ),
    )
    .unwrap();
    let mut web_sets = identity(&web_dir, &ca, "spiffe://cluster.local/ns/shop/sa/web");
    web_sets.push(format!("outbound.target={app}"));
    web_sets.push(format!("discovery.file={}", discovery.display()));
    let web = Needle::start(&web_sets, &[]);

    let first = request(web.outbound, "POST", "/orders", "{}");
    if first.0 != 200 {
        let (_, web_log) = web.stop("-TERM");
        let (_, api_log) = api.stop("-TERM");
        panic!("{first:?}\nweb:\n{web_log}\napi:\n{api_log}");
    }
    for _ in 0..3 {
        assert_eq!(
            request(web.outbound, "POST", "/orders", "{}"),
            (
                200,
                "from-api caller=spiffe://cluster.local/ns/shop/sa/web".into()
            )
        );
    }
    // Plaintext straight to the api sidecar is refused by its policy.
    let mut plain = TcpStream::connect(api.inbound).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    for needle in [web, api] {
        let (code, log) = needle.stop("-INT");
        assert_eq!(code, Some(0), "{log}");
    }
    let _ = std::fs::remove_dir_all(&web_dir);
    let _ = std::fs::remove_dir_all(&api_dir);
}

#[test]
fn settings_lists_every_setting_with_its_variable_and_default() {
    let out = Command::new(NEEDLE).arg("settings").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("proxy.idle_timeout (NEEDLE_PROXY_IDLE_TIMEOUT, default \"1h\")"),
        "{text}"
    );
    assert_eq!(text.matches("NEEDLE_").count(), 25, "{text}");
}

#[test]
fn the_demo_runs_a_whole_mesh_and_exits_cleanly() {
    let out = Command::new(NEEDLE)
        .args(["demo", "--seconds", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("every hop mutual TLS with the right identities: yes"),
        "{text}"
    );
    assert!(text.contains("split      v1 "), "{text}");
    assert!(text.contains("needle demo: all good"), "{text}");
}
