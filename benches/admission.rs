//! Admission benchmark (`cargo bench --bench admission`): prints figures,
//! asserts nothing about speed. Runs the real release daemon on a temp dir.
//!
//! - floor: a bare Unix-socket line echo round trip on one connection;
//! - admit/release round trips over the daemon's socket on one connection;
//! - decisions per second with many clients at once;
//! - the daemon's resident memory holding 10,000 sessions.

#[path = "../tests/it/util.rs"]
mod util;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use seatgate::admission::protocol::{encode_request, Request};
use util::{FakeServer, Gateway};

const ROUND_TRIPS: usize = 20_000;

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99), at(0.999))
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

/// Sends each line and waits for one line back; returns each round trip.
fn round_trips(stream: UnixStream, lines: &[Vec<u8>]) -> Vec<Duration> {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut answer = String::new();
    lines
        .iter()
        .map(|line| {
            let start = Instant::now();
            writer.write_all(line).unwrap();
            answer.clear();
            reader.read_line(&mut answer).unwrap();
            start.elapsed()
        })
        .collect()
}

fn echo_floor(dir: &std::path::Path, lines: &[Vec<u8>]) -> Vec<Duration> {
    let path = dir.join("echo.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut writer = s;
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            writer.write_all(&line).unwrap();
            line.clear();
        }
    });
    round_trips(UnixStream::connect(&path).unwrap(), lines)
}

/// Alternating admit and release of fresh keys: every request is a decision.
fn churn(server: &FakeServer, prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let key = format!("{prefix}-{}", i / 2);
            if i % 2 == 0 {
                encode_request(&server.admit(&key))
            } else {
                encode_request(&Request::Release { key })
            }
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a listing: nothing to list.
    }
    // The session journal lives in /run on a gateway, a tmpfs; here /run is
    // on disk, so the benchmark's gateway lives on /dev/shm.
    if std::path::Path::new("/dev/shm").is_dir() {
        std::env::set_var("TMPDIR", "/dev/shm");
    }
    let gw = Gateway::new(20_000);
    let d = gw.start();
    let server = FakeServer::start();
    let idle = rss_kib(d.child.id());
    println!(
        "seatgate admission benchmark ({} round trips per figure, daemon log level warn, state in {})",
        ROUND_TRIPS,
        gw.dir.path().display()
    );

    let admit_release = churn(&server, "bench", ROUND_TRIPS);
    let floor = percentiles(echo_floor(gw.dir.path(), &admit_release));
    let admission = percentiles(round_trips(
        UnixStream::connect(&d.socket).unwrap(),
        &admit_release,
    ));
    println!(
        "bare echo round trip      p50 {:>9}  p99 {:>9}  p99.9 {:>9}",
        us(floor.0),
        us(floor.1),
        us(floor.2)
    );
    println!(
        "admit/release round trip  p50 {:>9}  p99 {:>9}  p99.9 {:>9}",
        us(admission.0),
        us(admission.1),
        us(admission.2)
    );
    println!(
        "p50 ratio to the floor: {:.2}x",
        admission.0.as_secs_f64() / floor.0.as_secs_f64()
    );

    for clients in [4usize, 16, 64] {
        let per_client = 40_000 / clients / 2 * 2;
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let socket = d.socket.clone();
                let lines = churn(&server, &format!("many-{c}"), per_client);
                std::thread::spawn(move || {
                    round_trips(UnixStream::connect(&socket).unwrap(), &lines).len()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{clients:>3} clients: {total} decisions in {secs:.2} s = {:.0} decisions/s",
            total as f64 / secs
        );
    }

    let before = rss_kib(d.child.id());
    let lines: Vec<Vec<u8>> = (0..10_000)
        .map(|i| encode_request(&server.admit(&format!("held-{i:05}-user@example.org"))))
        .collect();
    round_trips(UnixStream::connect(&d.socket).unwrap(), &lines);
    let holding = rss_kib(d.child.id());
    let st = d.status();
    let after_status = rss_kib(d.child.id());
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "resident memory: {:.1} MiB at start, {:.1} MiB after the runs above, {:.1} MiB holding {} sessions, {:.1} MiB after a status listing them all",
        mib(idle),
        mib(before),
        mib(holding),
        st.in_use,
        mib(after_status)
    );
}
