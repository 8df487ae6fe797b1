//! Shared pools end to end (docs/pools.md): the development cloud and three
//! real daemons sharing a 150-seat pool over mTLS with 1.5 s slice leases,
//! a load generator with shifting demand, and a monitor sampling the three
//! pool usages all along. Each test drives one situation (demand moving, the
//! cloud down and back, a SIGKILLed gateway, a share undo) on its own cloud
//! and gateways; in every one the pool usages never sum above the pool.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use seatgate::admission::protocol::{AdmitRequest, Request, Response, ServerKind, ServerRef};
use seatgate::cloud::wire::POOL_HEADROOM;
use seatgate::license::lease::Limit;
use seatgate::status::Status;

use super::cloud::{DevCloud, Identity};
use super::util::{admitted, call, wait_for, Daemon, FakeServer, Gateway};

pub(super) const POOL: u32 = 150;
pub(super) const BUILTIN: u32 = 2;
pub(super) const SERIALS: [&str; 3] = ["ESG-PA", "ESG-PB", "ESG-PC"];
const LIMIT: Duration = Duration::from_secs(20);

/// A gateway of the pool: no license of its own, everything from the cloud.
pub(super) fn pool_gateway(cloud: &DevCloud, serial: &str) -> Gateway {
    let gw = Gateway::new(0);
    let _ = std::fs::remove_file(gw.path("bundle.json"));
    let section = cloud.section(&Identity::of(cloud, serial), 300);
    gw.write(&gw.config().device(serial).no_bundle_file().cloud(section));
    gw
}

pub(super) fn status(socket: &std::path::Path) -> Option<Status> {
    match call(socket, &Request::Status).ok()? {
        Response::Status(s) => Status::from_json(s.status).ok(),
        _ => None,
    }
}

pub(super) fn pool_use(s: &Status) -> u32 {
    s.in_use.saturating_sub(BUILTIN)
}

/// A cloud serving `LIC-POOL` (150 seats on A, shared with `members`) with
/// 1.5 s slice leases.
fn pool_cloud(members: &[&str]) -> DevCloud {
    pool_cloud_leasing(members, 1500)
}

/// The same with `lease_ms` slice leases. The share is set up before the
/// first `serve`, the order the docs give.
pub(super) fn pool_cloud_leasing(members: &[&str], lease_ms: u64) -> DevCloud {
    let signer = Gateway::new(0);
    let mut cloud = DevCloud::new(&signer, 3600);
    for s in members {
        cloud.run(&["device", "add", s, "--org", "ORG-T"]);
    }
    cloud.run(&[
        "license", "add", "LIC-POOL", "--device", members[0], "--seats", "150",
    ]);
    for s in &members[1..] {
        cloud.run(&["license", "share", "LIC-POOL", "--with", s]);
    }
    cloud.serve_args = vec!["--lease-ms".into(), lease_ms.to_string()];
    cloud.start();
    cloud
}

/// The three gateways of a pool under load: their daemons, a stand-in VPN
/// server on each, a load generator and a monitor.
struct Rig {
    started: Instant,
    cloud: DevCloud,
    gws: Vec<Gateway>,
    sockets: Vec<std::path::PathBuf>,
    daemons: Vec<Option<Daemon>>,
    _servers: Vec<FakeServer>,
    stop: Arc<AtomicBool>,
    targets: Arc<[AtomicU32; 3]>,
    admits: Arc<AtomicU32>,
    monitor: Arc<Mutex<Monitor>>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// What the monitor saw of the three pool usages.
#[derive(Default)]
struct Monitor {
    samples: u64,
    max_sum: u32,
    over: Vec<(Duration, [u32; 3])>,
    last: [u32; 3],
}

impl Rig {
    fn start() -> Rig {
        let started = Instant::now();
        let cloud = pool_cloud(&SERIALS);
        let gws: Vec<Gateway> = SERIALS.iter().map(|s| pool_gateway(&cloud, s)).collect();
        let sockets: Vec<_> = gws.iter().map(|g| g.socket()).collect();
        let daemons = gws.iter().map(|g| Some(g.start())).collect();
        for (i, sock) in sockets.iter().enumerate() {
            wait_for(
                &format!("{} to hold a slice lease", SERIALS[i]),
                LIMIT,
                || status(sock).filter(|s| s.pools.first().is_some_and(|p| p.lease_valid)),
            );
        }
        let servers: Vec<FakeServer> = sockets.iter().map(|s| FakeServer::start(s)).collect();
        let mut rig = Rig {
            started,
            cloud,
            gws,
            sockets,
            daemons,
            stop: Arc::new(AtomicBool::new(false)),
            targets: Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]),
            admits: Arc::new(AtomicU32::new(0)),
            monitor: Arc::default(),
            _servers: Vec::new(),
            threads: Vec::new(),
        };
        rig.threads.push(rig.monitor_thread());
        rig.threads.push(rig.load_thread(&servers));
        rig._servers = servers;
        rig
    }

    /// Samples the three pool usages until stopped. A gateway that is down
    /// keeps its sessions: its last value counts.
    fn monitor_thread(&self) -> thread::JoinHandle<()> {
        let (stop, monitor, sockets) = (
            self.stop.clone(),
            self.monitor.clone(),
            self.sockets.clone(),
        );
        let started = self.started;
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut m = monitor.lock().unwrap();
                for (i, sock) in sockets.iter().enumerate() {
                    if let Some(s) = status(sock) {
                        m.last[i] = pool_use(&s);
                    }
                }
                let sum: u32 = m.last.iter().sum();
                m.samples += 1;
                m.max_sum = m.max_sum.max(sum);
                if sum > POOL {
                    let (at, last) = (started.elapsed(), m.last);
                    m.over.push((at, last));
                }
                drop(m);
                // Pacing (not synchronisation): leaves the CPU to the daemons.
                thread::sleep(Duration::from_millis(5));
            }
        })
    }

    /// Keeps each gateway at its target number of sessions (pool part =
    /// target − 2), admitting one at a time, releasing too.
    fn load_thread(&self, servers: &[FakeServer]) -> thread::JoinHandle<()> {
        let (stop, targets, sockets, admits) = (
            self.stop.clone(),
            self.targets.clone(),
            self.sockets.clone(),
            self.admits.clone(),
        );
        let pids: Vec<_> = servers.iter().map(|s| s.pid()).collect();
        let relays: Vec<_> = servers.iter().map(|s| s.socket().to_path_buf()).collect();
        thread::spawn(move || {
            let mut held: [Vec<String>; 3] = Default::default();
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..3 {
                    let want = targets[i].load(Ordering::Relaxed) as usize;
                    if held[i].len() < want {
                        next += 1;
                        let key = format!("{}-{next}", SERIALS[i]);
                        let req = Request::Admit(AdmitRequest {
                            key: key.clone(),
                            user: format!("u{next}"),
                            server: ServerRef {
                                kind: ServerKind::Other,
                                pid: pids[i],
                            },
                            remote: "192.0.2.9".into(),
                            group: String::new(),
                        });
                        if call(&relays[i], &req).is_ok_and(|r| admitted(&r)) {
                            held[i].push(key);
                            admits.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if held[i].len() > want {
                        let key = held[i].last().unwrap().clone();
                        if call(&sockets[i], &Request::Release { key }).is_ok() {
                            held[i].pop();
                        }
                    }
                }
                // Pacing (not synchronisation): demand arrives over time.
                thread::sleep(Duration::from_millis(2));
            }
        })
    }

    /// Pool sessions wanted on A, B and C.
    fn set(&self, a: u32, b: u32, c: u32) {
        for (t, v) in self.targets.iter().zip([a, b, c]) {
            t.store(v + BUILTIN, Ordering::Relaxed);
        }
    }

    fn pool_of(&self, i: usize) -> u32 {
        status(&self.sockets[i]).map_or(0, |s| pool_use(&s))
    }

    fn reaches(&self, i: usize, n: u32, what: &str) -> Duration {
        let t = Instant::now();
        wait_for(what, LIMIT, || (self.pool_of(i) >= n).then_some(()));
        t.elapsed()
    }

    fn lease_expiry(&self, i: usize) -> Option<DateTime<Utc>> {
        status(&self.sockets[i]).and_then(|s| s.pools.first().and_then(|p| p.lease_expires))
    }

    /// Waits until every running gateway has renewed its slice lease
    /// `times` times: the allocator has redistributed the pool under the
    /// current demand that often, with the monitor sampling throughout.
    fn renewals(&self, times: usize) {
        for (i, serial) in SERIALS.iter().enumerate() {
            let mut seen = vec![self.lease_expiry(i)];
            wait_for(
                &format!("{serial} to renew its lease {times} times"),
                LIMIT,
                || {
                    let now = self.lease_expiry(i);
                    if now.is_some() && seen.last() != Some(&now) {
                        seen.push(now);
                    }
                    (seen.len() > times).then_some(())
                },
            );
        }
    }

    /// Stops gateway `i`'s daemon (SIGTERM; its sessions stay counted by
    /// the monitor) and returns its log (warnings and errors).
    fn stop_daemon(&mut self, i: usize) -> String {
        let d = self.daemons[i].take().expect("the daemon runs");
        d.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, log) = d.wait_exit(LIMIT);
        assert!(status.success(), "{log}");
        log
    }

    /// Stops the load and the monitor; asserts the pool was never
    /// oversubscribed and returns the report line.
    fn finish(mut self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let m = self.monitor.lock().unwrap();
        eprintln!(
            "pools ({what}): {} samples, max pool sum {} of {POOL}, {} admissions in {:?}",
            m.samples,
            m.max_sum,
            self.admits.load(Ordering::Relaxed),
            self.started.elapsed()
        );
        assert!(m.over.is_empty(), "pool oversubscribed: {:?}", m.over);
        assert!(m.max_sum <= POOL);
        assert!(m.samples > 100, "too few samples: {}", m.samples);
    }
}

#[test]
fn demand_moving_between_three_gateways_never_oversubscribes_the_pool() {
    let rig = Rig::start();
    // Demand mostly on A (more than the pool in total).
    rig.set(120, 15, 15);
    let phase1 = rig.reaches(0, 100, "A to reach 100 pool sessions");
    rig.renewals(2);
    // Demand moves to C.
    rig.set(10, 15, 120);
    let rebalance = rig.reaches(2, 100, "C to reach 100 pool sessions");
    rig.renewals(2);
    eprintln!(
        "pools: phase 1 A->100 in {phase1:?}; rebalancing A->C (C reaches 100) in {rebalance:?}"
    );
    rig.finish("demand moves");
}

#[test]
fn with_the_cloud_down_slices_run_out_no_pool_session_is_admitted_and_a_restart_resumes() {
    let mut rig = Rig::start();
    rig.set(10, 15, 120);
    rig.reaches(2, 100, "C to reach 100 pool sessions");

    // The cloud dies: slices run out, no new pool session anywhere; the
    // sessions held stay. Then it comes back (quiet for one lease).
    rig.cloud.stop();
    let cloud_down = Instant::now();
    for (i, sock) in rig.sockets.iter().enumerate() {
        wait_for(&format!("{}'s lease to run out", SERIALS[i]), LIMIT, || {
            status(sock).filter(|s| s.cap.pooled == 0 && !s.pools[0].lease_valid)
        });
    }
    let held_when_down: Vec<u32> = (0..3).map(|i| rig.pool_of(i)).collect();
    // Demand moves to A (B and C keep theirs): the sessions A is refused
    // are the proof that it decided without a lease before checking that
    // no gateway grew.
    let denials = status(&rig.sockets[0]).unwrap().denials;
    rig.set(60, 15, 120);
    wait_for("A to refuse 2 admissions", LIMIT, || {
        status(&rig.sockets[0]).filter(|s| s.denials >= denials + 2)
    });
    let grown: Vec<u32> = (0..3).map(|i| rig.pool_of(i)).collect();
    assert!(
        grown.iter().zip(&held_when_down).all(|(g, h)| g <= h),
        "no pool admission without a lease: {held_when_down:?} -> {grown:?}"
    );
    rig.cloud.start();
    let down_for = cloud_down.elapsed();
    let after_restart = rig.reaches(
        0,
        held_when_down[0] + 1,
        "A to grow again after the cloud restart",
    );
    eprintln!("pools: cloud down {down_for:?}, A grows again {after_restart:?} after restart");
    // A warned that its slice ran out, and why (the log is read once it
    // stopped).
    let log = rig.stop_daemon(0);
    for line in [
        "slice of POOL-LIC-POOL expired: pooled seats ",
        "(renewal failing: ",
    ] {
        assert!(log.contains(line), "A's log lacks {line:?}:\n{log}");
    }
    rig.finish("cloud down");
}

#[test]
fn a_sigkilled_pool_gateway_keeps_its_sessions_and_gets_a_lease_again() {
    let mut rig = Rig::start();
    rig.set(60, 30, 40);
    for (i, n) in [60, 30, 40].into_iter().enumerate() {
        rig.reaches(i, n, &format!("{} to reach {n} pool sessions", SERIALS[i]));
    }
    // B is SIGKILLed (kill9 waits for it to be gone) and restarted: its
    // sessions survive in its journal, it starts without a lease.
    let b = rig.daemons[1].take().unwrap();
    let held = rig.pool_of(1);
    b.kill9();
    let d = rig.gws[1].start();
    assert_eq!(pool_use(&d.status()), held, "B's sessions survive");
    rig.daemons[1] = Some(d);
    let t = Instant::now();
    wait_for("B to hold a lease again", LIMIT, || {
        status(&rig.sockets[1]).filter(|s| s.pools[0].lease_valid)
    });
    let b_back = t.elapsed();
    rig.set(60, 50, 40);
    rig.reaches(1, 50, "B to grow to 50 pool sessions");
    eprintln!("pools: B restarted holds a lease after {b_back:?}");
    rig.finish("SIGKILL");
}

#[test]
fn after_a_share_undo_the_leaving_gateway_drains_before_its_seats_move() {
    let mut rig = Rig::start();
    rig.set(10, 15, 120);
    rig.reaches(2, 100, "C to reach 100 pool sessions");
    // Share undo: C leaves the pool; its sessions drain; only then does A
    // get its seats.
    rig.cloud
        .run(&["license", "unshare", "LIC-POOL", "--from", SERIALS[2]]);
    wait_for("C to lose the pool", LIMIT, || {
        status(&rig.sockets[2]).filter(|s| s.cap_total == BUILTIN)
    });
    rig.set(100, 40, 0);
    let after_unshare = rig.reaches(0, 100, "A to get C's seats after C drained");
    assert_eq!(rig.pool_of(2), 0);
    eprintln!("pools: A takes C's seats {after_unshare:?} after unshare");
    // C warned that its slice went: withdrawn (the new bundle came first)
    // or expired (the cloud stopped renewing it before the bundle came).
    let log = rig.stop_daemon(2);
    assert!(
        ["withdrawn", "expired"]
            .iter()
            .any(|k| log.contains(&format!("slice of POOL-LIC-POOL {k}: pooled seats "))),
        "C's log lacks the slice going:\n{log}"
    );
    rig.finish("share undo");
}

/// What the devcloud's allocator knows of `serial` in `pool` (None: not a
/// member any more, forgotten).
pub(super) fn cloud_member(
    cloud: &DevCloud,
    pool: &str,
    serial: &str,
) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(cloud.path("pools.json")).ok()?;
    let alloc: serde_json::Value = serde_json::from_str(&text).ok()?;
    let member = &alloc["pools"][pool]["members"][serial];
    (!member.is_null()).then(|| member.clone())
}

/// The pools the gateway remembers in its state directory.
fn remembered(gw: &Gateway) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(gw.path("state/pools.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .map(|v| v["pools"].clone())
}

#[test]
fn a_gateway_restarted_after_a_share_undo_still_reports_its_draining_sessions() {
    use std::os::unix::fs::PermissionsExt;
    const B: &str = "ESG-PB";
    const P: &str = "POOL-LIC-POOL";
    let cloud = pool_cloud(&["ESG-PA", B]);

    // B holds 2 built-in and 4 pool sessions (its first slice: the
    // headroom it asks for).
    let gw = pool_gateway(&cloud, B);
    let sock = gw.socket();
    let daemon = gw.start();
    wait_for("B to hold a slice of at least 4", LIMIT, || {
        status(&sock).filter(|s| {
            s.pools
                .first()
                .is_some_and(|p| p.lease_valid && p.id == P && p.slice >= 4)
        })
    });
    let vpn = FakeServer::start(&sock);
    for i in 0..BUILTIN + 4 {
        let resp = vpn.try_call(&vpn.admit(&format!("s{i}"))).unwrap();
        assert!(admitted(&resp), "session {i}: {resp:?}");
    }
    let epoch = wait_for("B to remember the pool and its epoch", LIMIT, || {
        remembered(&gw).and_then(|p| p[P].as_u64())
    });
    let mode = std::fs::metadata(gw.path("state/pools.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert!(epoch > 0);

    // The share is undone: B's pooled part is 0, its sessions drain; the
    // cloud keeps their seats held.
    cloud.run(&["license", "unshare", "LIC-POOL", "--from", B]);
    wait_for("B to lose the pool", LIMIT, || {
        status(&sock).filter(|s| s.cap_total == BUILTIN && s.in_use == BUILTIN + 4)
    });
    wait_for("the cloud to see B leave with 4 held", LIMIT, || {
        cloud_member(&cloud, P, B).filter(|m| m["member"] == false && m["reported"] == 4)
    });

    // B dies and comes back before its sessions end: it still knows the
    // pool it left and keeps reporting it.
    daemon.kill9();
    let daemon = gw.start();
    assert_eq!(daemon.status().in_use, BUILTIN + 4, "sessions survive");
    assert_eq!(daemon.status().cap.pooled, 0, "no slice after a restart");
    let resp = call(&sock, &Request::Release { key: "s0".into() }).unwrap();
    assert!(matches!(resp, Response::Release(r) if r.released));
    wait_for("the restarted B to report 3 pool sessions", LIMIT, || {
        cloud_member(&cloud, P, B).filter(|m| m["reported"] == 3)
    });
    assert!(
        remembered(&gw).is_some_and(|p| p[P].as_u64().is_some_and(|e| e >= epoch)),
        "the pool stays remembered while it drains"
    );

    // Drained: the cloud frees the seats and B forgets the pool.
    for i in 1..BUILTIN + 4 {
        call(
            &sock,
            &Request::Release {
                key: format!("s{i}"),
            },
        )
        .unwrap();
    }
    wait_for("the cloud to forget B once drained", LIMIT, || {
        cloud_member(&cloud, P, B).is_none().then_some(())
    });
    wait_for("B to forget the pool on disk", LIMIT, || {
        remembered(&gw).filter(|p| p.as_object().is_some_and(|o| o.is_empty()))
    });
    drop(daemon);
}

/// Starts `gw`'s daemon logging at info into `log` (a file: a pipe nobody
/// reads would block a daemon that logs every admission).
fn start_logging(gw: &Gateway, log: &std::path::Path) -> Daemon {
    let child = std::process::Command::new(super::util::bin())
        .args(["run", "--config"])
        .arg(gw.config_path())
        .env_remove("SEATGATE_SOCKET")
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        socket: gw.socket(),
    };
    d.wait_ready();
    d
}

#[test]
fn a_refusal_reaches_the_cloud_within_a_second_even_with_300_s_leases() {
    const A: &str = "ESG-PA";
    const P: &str = "POOL-LIC-POOL";
    let cloud = pool_cloud_leasing(&[A, "ESG-PB"], 300_000);

    let gw = pool_gateway(&cloud, A);
    let sock = gw.socket();
    let log = gw.path("seatgate.log");
    let daemon = start_logging(&gw, &log);
    let first = wait_for("A to hold a slice lease", LIMIT, || {
        status(&sock).and_then(|s| s.pools.first().filter(|p| p.lease_valid).cloned())
    });
    assert_eq!(first.id, P);
    assert_eq!(
        first.change,
        Some(format!("granted 0 -> {}", first.slice)),
        "status shows the first grant"
    );
    assert!(first.changed_at.is_some());
    // Renewal would be 100 s away: whatever the cloud hears within a
    // second below was asked for by demand.
    let vpn = FakeServer::start(&sock);
    let mut n = 0;
    let refused_key = loop {
        let key = format!("s{n}");
        n += 1;
        let resp = vpn.try_call(&vpn.admit(&key)).unwrap();
        if !admitted(&resp) {
            break key;
        }
        assert!(n < BUILTIN + POOL, "never refused");
    };
    let refused_at = Instant::now();
    let pool_in_use = pool_use(&status(&sock).unwrap());
    // The cloud hears of the refused client (one seat of demand) within 1 s.
    let member = wait_for("the cloud to hear of the refusal", LIMIT, || {
        cloud_member(&cloud, P, A).filter(|m| {
            m["reported"] == pool_in_use && m["wanted"] == pool_in_use + POOL_HEADROOM + 1
        })
    });
    let heard = refused_at.elapsed();
    assert!(
        heard < Duration::from_secs(1),
        "the cloud heard of the refusal after {heard:?}: {member}"
    );
    // The same client retrying (a user pressing connect again) is admitted
    // on the larger slice the answer brought, and counted only once.
    let admitted_after = wait_for("the refused client to get in", LIMIT, || {
        let resp = vpn.try_call(&vpn.admit(&refused_key)).unwrap();
        // Pacing (not synchronisation): a user retrying.
        std::thread::sleep(Duration::from_millis(50));
        admitted(&resp).then(|| refused_at.elapsed())
    });
    let grown = status(&sock).unwrap().pools[0].clone();
    assert!(grown.slice > first.slice, "{first:?} -> {grown:?}");
    // Status shows the last growth: `grown FROM -> SLICE`.
    let change = grown.change.expect("status shows the change");
    let from: u32 = change
        .strip_prefix("grown ")
        .and_then(|c| c.strip_suffix(&format!(" -> {}", grown.slice)))
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("not a growth to {}: {change:?}", grown.slice));
    assert!(from >= first.slice && from < grown.slice, "{change}");
    eprintln!("pools: refusal heard by the cloud after {heard:?}, the client admitted after {admitted_after:?} (300 s leases)");
    let text = std::fs::read_to_string(&log).unwrap();
    for line in [
        format!(
            "slice of {P} granted: pooled seats 0 -> {}, wanted ",
            first.slice
        ),
        format!("slice of {P} grown: pooled seats {} -> ", first.slice),
    ] {
        assert!(text.contains(&line), "log lacks {line:?}:\n{text}");
    }
    drop(daemon);
}

#[test]
fn a_client_retrying_in_a_storm_is_one_seat_of_demand() {
    const A: &str = "ESG-PA";
    const P: &str = "POOL-LIC-POOL";
    let cloud = pool_cloud_leasing(&[A, "ESG-PB"], 300_000);
    let gw = pool_gateway(&cloud, A);
    let sock = gw.socket();
    let _daemon = gw.start();
    wait_for("A to hold a slice lease", LIMIT, || {
        status(&sock).filter(|s| s.pools.first().is_some_and(|p| p.lease_valid))
    });
    // A takes the whole pool (B never comes), 20 new clients at a time.
    let vpn = FakeServer::start(&sock);
    let mut next = 0;
    wait_for("A to hold the whole pool", LIMIT, || {
        for _ in 0..20 {
            let key = format!("s{next}");
            if admitted(&vpn.try_call(&vpn.admit(&key)).unwrap()) {
                next += 1;
            }
        }
        (pool_use(&status(&sock).unwrap()) == POOL).then_some(())
    });
    wait_for("the cloud to know A holds the pool", LIMIT, || {
        cloud_member(&cloud, P, A).filter(|m| m["reported"] == POOL)
    });
    // One client retries 30 times in a row, then a second one tries once:
    // the report after that carries two seats of demand, not 31.
    for _ in 0..30 {
        assert!(!admitted(&vpn.try_call(&vpn.admit("storm")).unwrap()));
        // Pacing (not synchronisation): a client retrying every 20 ms.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!admitted(&vpn.try_call(&vpn.admit("second")).unwrap()));
    let member = wait_for("the cloud to hear of both clients", LIMIT, || {
        cloud_member(&cloud, P, A)
            .filter(|m| m["wanted"].as_u64() > Some(u64::from(POOL + POOL_HEADROOM + 1)))
    });
    assert_eq!(member["wanted"], POOL + POOL_HEADROOM + 2, "{member}");
}

#[test]
fn a_fresh_cloud_grants_at_once_and_a_restarted_one_stays_quiet_one_lease_and_says_why() {
    const B: &str = "ESG-PB";
    const LEASE: i64 = 6000;
    let mut cloud = pool_cloud_leasing(&["ESG-PA", B], LEASE as u64);
    let gw = pool_gateway(&cloud, B);
    let sock = gw.socket();
    let _daemon = gw.start();
    // A cloud that never granted for the pool (no allocation state) grants
    // at once: B's headroom of 4, where a quiet cloud would give its usage, 0.
    let s = wait_for("B's first slice lease", LIMIT, || {
        status(&sock).filter(|s| s.pools.first().is_some_and(|p| p.lease_valid))
    });
    assert_eq!((s.pools[0].slice, s.pools[0].limited), (4, None));
    let vpn = FakeServer::start(&sock);
    for i in 0..BUILTIN + 3 {
        let resp = vpn.try_call(&vpn.admit(&format!("s{i}"))).unwrap();
        assert!(admitted(&resp), "session {i}: {resp:?}");
    }

    // The cloud restarts with its allocation state: for one lease length it
    // grants B its 3 pool sessions and no more, and the lease says until when.
    cloud.stop();
    let before = Utc::now();
    cloud.start();
    let after = Utc::now();
    let quiet = |s: &Status| match s
        .pools
        .first()
        .and_then(|p| p.limited.filter(|_| p.lease_valid))
    {
        Some(Limit::Quiet { until }) => Some((s.clone(), until)),
        _ => None,
    };
    let (s, until) = wait_for("a quiet lease", LIMIT, || {
        status(&sock).as_ref().and_then(quiet)
    });
    let lease = chrono::Duration::milliseconds(LEASE);
    assert!(
        before + lease <= until && until <= after + lease,
        "quiet until {until}, restarted between {before} and {after}"
    );
    assert_eq!((s.pools[0].slice, s.pools[0].in_use), (3, 3));
    let text = String::from_utf8(gw.cli(&["status"]).stdout).unwrap();
    let why = format!(
        "cloud restarted: no new grants until {} UTC",
        until.format("%H:%M:%S")
    );
    assert!(text.contains(&why), "{why:?} not in {text}");
    assert!(
        !admitted(&vpn.try_call(&vpn.admit("more")).unwrap()),
        "no new pool session while quiet"
    );

    // After the quiet period B gets what it asks again.
    let s = wait_for("B's slice to grow after the quiet period", LIMIT, || {
        status(&sock).filter(|s| s.pools[0].lease_valid && s.pools[0].slice > 3)
    });
    assert!(Utc::now() >= until);
    assert_eq!(s.pools[0].limited, None);
    let resp = vpn.try_call(&vpn.admit("more")).unwrap();
    assert!(admitted(&resp), "{resp:?}");
}

/// Attack: `[admission] over_cap = "disconnect_newest"` on a pool gateway
/// while the cloud is down. The slice's lease runs out, the cap falls to
/// the built-in seats, and the over-cap countdown would cut every pool
/// session: docs/pools.md promises that an unreachable cloud never takes
/// seats from sessions and that pool sessions drain, never cut.
#[test]
fn with_the_cloud_down_a_disconnecting_over_cap_never_cuts_pool_sessions() {
    const A: &str = "ESG-PA";
    let mut cloud = pool_cloud_leasing(&[A, "ESG-PB"], 1500);
    let gw = pool_gateway(&cloud, A);
    let section = cloud.section(&Identity::of(&cloud, A), 300);
    gw.write(
        &gw.config()
            .device(A)
            .no_bundle_file()
            .cloud(section)
            .admission("over_cap = \"disconnect_newest\"\nover_cap_grace_ms = 100")
            // Required by a disconnecting over_cap; no server listens there.
            .reconcile("kind = \"openvpn\"\nmanagement = \"mgmt.sock\"\ninterval_ms = 3600000"),
    );
    let d = gw.start();
    let sock = gw.socket();
    wait_for("A to hold a slice lease", LIMIT, || {
        status(&sock).filter(|s| s.pools.first().is_some_and(|p| p.lease_valid))
    });
    let vpn = FakeServer::start(&sock);
    for i in 0..6 {
        assert!(admitted(
            &vpn.try_call(&vpn.admit(&format!("s{i}"))).unwrap()
        ));
    }
    cloud.stop();
    wait_for("A's lease to run out", LIMIT, || {
        status(&sock).filter(|s| s.cap.pooled == 0)
    });
    // Several over-cap looks (one per dead-server check) and graces.
    let st = d.after_reaps(5);
    assert_eq!((st.in_use, st.cap_total), (6, BUILTIN));
    assert_eq!(st.over_cap, None, "no pool session is planned to be cut");
}
