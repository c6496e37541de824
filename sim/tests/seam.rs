//! The real Needle port, over turmoil's simulated network: proof that the
//! network seam carries the same proxy code into the simulator, and that
//! the same seed gives the same run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use needle_io::net::{Network, TurmoilNet};
use needle_io::proxy::{Port, PortConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SMTP: u16 = 25;
const OUTBOUND: u16 = 4140;
const LINK: Duration = Duration::from_millis(1);

fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// A world with an SMTP-like server (it greets first), a Needle port in
/// front of it, and a client that waits for the greeting. Returns the
/// client's timeline, in simulated time.
fn server_first_world(seed: u64) -> Vec<String> {
    println!("seed {seed}: replay with NEEDLE_SEED={seed}");
    let trace = Arc::new(Mutex::new(Vec::new()));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        .min_message_latency(LINK)
        .max_message_latency(LINK)
        .simulation_duration(Duration::from_secs(60))
        .build();

    sim.host("server", || async {
        let listener = TurmoilNet.bind(any(SMTP)).await?;
        loop {
            let (mut conn, _) = needle_io::net::Listener::accept(&listener).await?;
            tokio::spawn(async move {
                conn.write_all(b"220 mail.test ready\r\n").await?;
                let mut buf = [0u8; 256];
                loop {
                    let n = conn.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    conn.write_all(&buf[..n]).await?;
                }
            });
        }
    });

    sim.host("proxy", || async {
        let target = SocketAddr::new(turmoil::lookup("server"), SMTP);
        let mut config = PortConfig {
            target: Some(target),
            ..PortConfig::default()
        };
        // Far longer than the run: only the server-first path can be quick.
        config.detect.detect.timeout = Duration::from_secs(600);
        let listener = TurmoilNet.bind(any(OUTBOUND)).await?;
        Port::new(TurmoilNet, config)
            .run(listener, std::future::pending())
            .await;
        Ok(())
    });

    let timeline = Arc::clone(&trace);
    sim.client("client", async move {
        let log = |event: String| timeline.lock().unwrap().push(event);
        let started = tokio::time::Instant::now();
        let mut conn = turmoil::net::TcpStream::connect(("proxy", OUTBOUND)).await?;
        log(format!("{:?} connected", started.elapsed()));
        let mut greeting = [0u8; 21];
        conn.read_exact(&mut greeting).await?;
        log(format!(
            "{:?} greeting {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&greeting)
        ));
        conn.write_all(b"QUIT\r\n").await?;
        let mut echo = [0u8; 6];
        conn.read_exact(&mut echo).await?;
        log(format!(
            "{:?} echo {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&echo)
        ));
        Ok(())
    });

    sim.run().expect("simulation ends cleanly");
    trace.lock().unwrap().clone()
}

fn seed() -> u64 {
    std::env::var("NEEDLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

#[test]
fn a_server_first_protocol_crosses_the_simulated_proxy_without_a_stall() {
    let trace = server_first_world(seed());
    for line in &trace {
        println!("{line}");
    }
    assert_eq!(trace.len(), 3, "{trace:?}");
    // A turmoil connect completes after one link (1 ms): the proxy accepts
    // at 1 ms, dials after its 2 ms dial delay (3 ms), is connected at 4 ms,
    // the greeting reaches the proxy at 5 ms and the client at 6 ms. Without
    // the dial-ahead it would wait for the 600 s detection timeout.
    assert!(trace[1].starts_with("6ms greeting"), "{trace:?}");
    assert!(trace[2].ends_with("echo \"QUIT\\r\\n\""), "{trace:?}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    for seed in [1, 2, 3] {
        assert_eq!(
            server_first_world(seed),
            server_first_world(seed),
            "seed {seed}"
        );
    }
}
