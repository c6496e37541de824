//! Two "pods" on one machine, as Kubernetes would make them: each a network
//! namespace with its own address, joined by a veth pair, with an
//! application, a Needle sidecar running under its own user id (2102), and
//! the iptables rules `needle init` installs. A plain HTTP request from the
//! client pod's application to the server pod's address reaches the server
//! application through both sidecars with mutual TLS (checked on both
//! sides' metrics and by the identity the application is told), and a
//! server-speaks-first protocol passes without a stall.
//!
//! Needs root, `ip`, `iptables`, `setpriv`, `curl` and `python3`
//! (`scripts/install-test-deps.sh`, run by `.ci/run`, installs the first
//! two). Where the machine forbids namespaces it prints why and passes
//! without checking anything.
#![cfg(target_os = "linux")]

#[path = "../../core/tests/common/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NEEDLE: &str = env!("CARGO_BIN_EXE_needle");
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const PROXY_UID: &str = "2102";

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A pod: a network namespace, removed (with its veth end) when dropped.
struct Pod {
    ns: String,
    ip: &'static str,
    children: Vec<Child>,
}

impl Pod {
    fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", &self.ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Starts a long-running process in the pod, as `uid` if given; its
    /// stderr goes to `log`.
    fn spawn(&mut self, uid: Option<&str>, log: &Path, program: &str, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]);
        if let Some(uid) = uid {
            cmd.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]);
        }
        cmd.arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"));
        self.children.push(cmd.spawn().expect("spawn in pod"));
    }

    /// Waits until `url` answers inside the pod.
    fn wait_http(&self, url: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.exec("curl", &["-sf", "-o", "/dev/null", url]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{url} never answered in {}", self.ns));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = run("ip", &["netns", "delete", &self.ns]);
    }
}

fn skip(why: &str) {
    println!("SKIPPED two_pods_mesh_through_iptables_redirection: {why}");
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("needle-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The sidecars run as the proxy's user id and must read their files.
    run("chmod", &["0755", dir.to_str().unwrap()]).unwrap();
    dir
}

/// Writes a workload's credentials into `dir`, readable by the proxy user.
fn credentials(dir: &Path, ca: &pki::Ca, id: &str) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let leaf = ca.leaf_valid(id, now - 3600, now + 86_400);
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        ("cert.pem", leaf.chain_pem.as_str()),
        ("key.pem", leaf.key_pem.as_str()),
        ("ca.pem", ca.pem.as_str()),
    ];
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).unwrap();
        run("chmod", &["0644", dir.join(name).to_str().unwrap()]).unwrap();
    }
    run("chmod", &["0755", dir.to_str().unwrap()]).unwrap();
    vec![
        format!("identity.cert={}", dir.join("cert.pem").display()),
        format!("identity.key={}", dir.join("key.pem").display()),
        format!("identity.trust_bundle={}", dir.join("ca.pem").display()),
    ]
}

fn needle_args(sets: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    for s in sets {
        args.push("--set".to_owned());
        args.push(s.clone());
    }
    args
}

/// The HTTP application: answers with the identity Needle told it.
const HTTP_APP: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("caller=" + self.headers.get("needle-client-id", "none")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

/// A server that speaks first (SMTP-like).
const BANNER_APP: &str = r#"
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 2525))
s.listen(16)
def serve(c):
    c.sendall(b"220 banner\r\n")
    c.recv(64)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Waits until the banner app listens.
const WAIT_BANNER: &str = r#"
import socket, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", 2525), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
"#;

/// A client that measures how long the banner takes to arrive.
const BANNER_CLIENT: &str = r#"
import socket, sys, time
start = time.monotonic()
c = socket.create_connection((sys.argv[1], 2525), timeout=10)
banner = c.recv(64)
print(f"{(time.monotonic() - start) * 1000:.1f} {banner.decode().strip()}")
c.sendall(b"QUIT\r\n")
"#;

#[test]
fn two_pods_mesh_through_iptables_redirection() {
    for tool in ["ip", "iptables", "setpriv", "curl", "python3"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return skip(&format!("`{tool}` is not installed"));
        }
    }
    let id = std::process::id() % 100_000;
    let mut client = Pod {
        ns: format!("needle-web-{id}"),
        ip: "10.251.0.1",
        children: Vec::new(),
    };
    if let Err(e) = run("ip", &["netns", "add", &client.ns]) {
        return skip(&format!("cannot create a network namespace: {e}"));
    }
    let mut server = Pod {
        ns: format!("needle-api-{id}"),
        ip: "10.251.0.2",
        children: Vec::new(),
    };
    run("ip", &["netns", "add", &server.ns]).unwrap();
    // The "pod network": a veth pair, one end in each pod.
    let (va, vb) = (format!("nw{id}"), format!("na{id}"));
    run(
        "ip",
        &["link", "add", &va, "type", "veth", "peer", "name", &vb],
    )
    .unwrap();
    for (pod, dev) in [(&client, &va), (&server, &vb)] {
        run("ip", &["link", "set", dev, "netns", &pod.ns]).unwrap();
        pod.exec(
            "ip",
            &["addr", "add", &format!("{}/24", pod.ip), "dev", dev],
        )
        .unwrap();
        pod.exec("ip", &["link", "set", dev, "up"]).unwrap();
        pod.exec("ip", &["link", "set", "lo", "up"]).unwrap();
        if let Err(e) = pod.exec(
            NEEDLE,
            &[
                "init",
                "--proxy-uid",
                PROXY_UID,
                "--skip-inbound-ports",
                "4191",
            ],
        ) {
            return skip(&format!("cannot install iptables rules: {e}"));
        }
    }

    let dir = temp_dir();
    let ca = pki::Ca::new("e2e mesh CA");
    // The server pod: its applications and its sidecar.
    server.spawn(
        None,
        &dir.join("http-app.log"),
        "python3",
        &["-c", HTTP_APP],
    );
    server.spawn(
        None,
        &dir.join("banner-app.log"),
        "python3",
        &["-c", BANNER_APP],
    );
    let api_sets = credentials(&dir.join("api"), &ca, API);
    let args = needle_args(&api_sets);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    server.spawn(Some(PROXY_UID), &dir.join("api-needle.log"), NEEDLE, &args);

    // The client pod's sidecar: discovery says the server pod's ports are
    // meshed (reached by redirection, so no proxy address).
    let discovery = dir.join("services.toml");
    let mut services = String::new();
    for port in [8080, 2525] {
        services.push_str(&format!(
            "[[service]]\ndst = \"{}:{port}\"\n[[service.backend]]\nname = \"api\"\nendpoint = [{{ addr = \"{}:{port}\", identity = \"{API}\" }}]\n",
            server.ip, server.ip
        ));
    }
    std::fs::write(&discovery, services).unwrap();
    run("chmod", &["0644", discovery.to_str().unwrap()]).unwrap();
    let mut web_sets = credentials(&dir.join("web"), &ca, WEB);
    web_sets.push(format!("discovery.file={}", discovery.display()));
    web_sets.push("log.filter=info,needle_io=debug".into());
    let args = needle_args(&web_sets);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    client.spawn(Some(PROXY_UID), &dir.join("web-needle.log"), NEEDLE, &args);

    client.wait_http("http://127.0.0.1:4191/ready").unwrap();
    server.wait_http("http://127.0.0.1:4191/ready").unwrap();
    server.wait_http("http://127.0.0.1:8080/").unwrap();
    server
        .exec("python3", &["-c", WAIT_BANNER])
        .expect("the banner app listens");

    // The client application knows nothing of Needle: plain HTTP to the
    // server pod's address.
    let url = format!("http://{}:8080/orders", server.ip);
    let logs = || {
        ["web-needle.log", "api-needle.log", "http-app.log"]
            .map(|f| {
                let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                format!("--- {f}\n{text}")
            })
            .join("\n")
    };
    for _ in 0..3 {
        let body = client
            .exec("curl", &["-sS", "--max-time", "10", &url])
            .unwrap();
        assert_eq!(
            body,
            format!("caller={WEB}"),
            "the server app saw the client's identity\n{}",
            logs()
        );
    }

    // A server-first protocol through both sidecars.
    let out = client
        .exec("python3", &["-c", BANNER_CLIENT, server.ip])
        .unwrap();
    let (ms, banner) = out.trim().split_once(' ').unwrap();
    let ms: f64 = ms.parse().unwrap();
    println!("server-first banner through two sidecars after {ms} ms");
    assert_eq!(banner, "220 banner");
    assert!(
        ms < 1000.0,
        "stalled for {ms} ms (detection timeout is 5 s)"
    );

    // Both sides' metrics say mutual TLS, with the right identities.
    let metrics = |pod: &Pod| {
        pod.exec("curl", &["-sS", "http://127.0.0.1:4191/metrics"])
            .unwrap()
    };
    let web_metrics = metrics(&client);
    let api_metrics = metrics(&server);
    let has = |text: &str, name: &str, labels: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
    };
    assert!(
        has(
            &web_metrics,
            "request_total",
            &[
                "direction=\"outbound\"",
                "tls=\"true\"",
                &format!("server_id=\"{API}\"")
            ]
        ),
        "client side:\n{web_metrics}"
    );
    assert!(
        has(
            &api_metrics,
            "request_total",
            &[
                "direction=\"inbound\"",
                "tls=\"true\"",
                &format!("client_id=\"{WEB}\"")
            ]
        ),
        "server side:\n{api_metrics}"
    );
    assert!(
        has(
            &api_metrics,
            "tcp_open_total",
            &[
                "direction=\"inbound\"",
                "tls=\"true\"",
                &format!("client_id=\"{WEB}\"")
            ]
        ),
        "server side TCP:\n{api_metrics}"
    );
    // The admin port is reachable from the pod network (probes, scrapes)
    // but changes state only for localhost.
    let admin = format!("http://{}:4191", server.ip);
    let remote_put = client
        .exec(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "PUT",
                "--data",
                "debug",
                &format!("{admin}/log-level"),
            ],
        )
        .unwrap();
    assert_eq!(remote_put, "403", "PUT /log-level from another pod");
    let remote_ready = client
        .exec(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{admin}/ready"),
            ],
        )
        .unwrap();
    assert_eq!(remote_ready, "200", "probes work from outside");
    drop(client);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
