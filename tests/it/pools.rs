//! Shared pools end to end (docs/pools.md): the development cloud and three
//! real daemons sharing a 150-seat pool over mTLS with 1.5 s slice leases,
//! a load generator with shifting demand, and a monitor sampling the three
//! pool usages all along: their sum never exceeds the pool, through a cloud
//! restart, a SIGKILLed gateway and a share undo.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use seatgate::admission::protocol::{Request, Response};
use seatgate::license::bundle::encode_public_key;
use seatgate::status::Status;

use super::cloud::DevCloud;
use super::util::{admitted, call, wait_for, Daemon, FakeServer, Gateway};

const POOL: u32 = 150;
const BUILTIN: u32 = 2;
const SERIALS: [&str; 3] = ["ESG-PA", "ESG-PB", "ESG-PC"];
const LIMIT: Duration = Duration::from_secs(20);

/// A gateway of the pool: no license of its own, everything from the cloud.
fn pool_gateway(cloud: &DevCloud, serial: &str) -> Gateway {
    let gw = Gateway::new(0);
    let _ = std::fs::remove_file(gw.path("bundle.json"));
    let text = format!(
        "device = \"{serial}\"\n[license]\ntrusted_keys = [\"{}\"]\n[paths]\nsocket = \"run/seatgate.sock\"\nruntime_dir = \"run\"\nstate_dir = \"state\"\n[admission]\nserver_check_ms = 100\n[cloud]\nurl = \"https://{}/\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\npoll_interval_ms = 300\nmax_backoff_ms = 600\nrequest_timeout_ms = 1000\n",
        encode_public_key(&gw.key.verifying_key()),
        cloud.addr,
        cloud.path("ca.pem").display(),
        cloud.path(&format!("devices/{serial}.pem")).display(),
        cloud.path(&format!("devices/{serial}.key")).display(),
    );
    std::fs::write(gw.config_path(), text).unwrap();
    gw
}

fn status(socket: &std::path::Path) -> Option<Status> {
    match call(socket, &Request::Status).ok()? {
        Response::Status(s) => serde_json::from_value(s.status).ok(),
        _ => None,
    }
}

fn pool_use(s: &Status) -> u32 {
    s.in_use.saturating_sub(BUILTIN)
}

/// The monitor: samples the three pool usages until stopped.
struct Monitor {
    samples: u64,
    max_sum: u32,
    over: Vec<(Duration, [u32; 3])>,
    last: [u32; 3],
}

#[test]
fn three_gateways_share_a_150_seat_pool_and_never_oversubscribe_it() {
    let started = Instant::now();
    let signer = Gateway::new(0);
    let mut cloud = DevCloud::new(&signer, 3600);
    for s in SERIALS {
        cloud.run(&["device", "add", s, "--org", "ORG-T"]);
    }
    cloud.run(&[
        "license", "add", "LIC-POOL", "--device", SERIALS[0], "--seats", "150",
    ]);
    cloud.run(&["license", "share", "LIC-POOL", "--with", SERIALS[1]]);
    cloud.run(&["license", "share", "LIC-POOL", "--with", SERIALS[2]]);
    cloud.serve_args = vec!["--lease-ms".into(), "1500".into()];
    cloud.start();

    let gws: Vec<Gateway> = SERIALS.iter().map(|s| pool_gateway(&cloud, s)).collect();
    let sockets: Vec<_> = gws.iter().map(|g| g.socket()).collect();
    let daemons: Arc<Mutex<Vec<Option<Daemon>>>> =
        Arc::new(Mutex::new(gws.iter().map(|g| Some(g.start())).collect()));
    for (i, sock) in sockets.iter().enumerate() {
        wait_for(
            &format!("{} to hold a slice lease", SERIALS[i]),
            LIMIT,
            || status(sock).filter(|s| s.pools.first().is_some_and(|p| p.lease_valid)),
        );
    }
    let servers: Vec<FakeServer> = sockets.iter().map(|s| FakeServer::start(s)).collect();

    // Monitor.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = Arc::new(Mutex::new(Monitor {
        samples: 0,
        max_sum: 0,
        over: Vec::new(),
        last: [0; 3],
    }));
    let mon = {
        let (stop, monitor, sockets) = (stop.clone(), monitor.clone(), sockets.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut m = monitor.lock().unwrap();
                for (i, sock) in sockets.iter().enumerate() {
                    // A gateway that is down keeps its sessions: last value.
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
                thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // Load generator: keeps each gateway at its target number of sessions
    // (pool part = target − 2), admitting one at a time, releasing too.
    let targets: Arc<[AtomicU32; 3]> =
        Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
    let admits = Arc::new(AtomicU32::new(0));
    let load = {
        let (stop, targets, sockets, admits) = (
            stop.clone(),
            targets.clone(),
            sockets.clone(),
            admits.clone(),
        );
        let reqs: Vec<_> = servers.iter().map(|s| s.pid()).collect();
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
                        let req = Request::Admit(seatgate::admission::protocol::AdmitRequest {
                            key: key.clone(),
                            user: format!("u{next}"),
                            server: seatgate::admission::protocol::ServerRef {
                                kind: seatgate::admission::protocol::ServerKind::Other,
                                pid: reqs[i],
                            },
                            remote: "192.0.2.9".into(),
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
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let set = |a: u32, b: u32, c: u32| {
        for (t, v) in targets.iter().zip([a, b, c]) {
            t.store(v + BUILTIN, Ordering::Relaxed);
        }
    };
    let pool_of = |i: usize| status(&sockets[i]).map_or(0, |s| pool_use(&s));

    // Phase 1: demand mostly on A (more than the pool in total).
    set(120, 15, 15);
    let t1 = Instant::now();
    wait_for("A to reach 100 pool sessions", LIMIT, || {
        (pool_of(0) >= 100).then_some(())
    });
    let phase1 = t1.elapsed();
    thread::sleep(Duration::from_secs(2));

    // Phase 2: demand moves to C.
    set(10, 15, 120);
    let t2 = Instant::now();
    wait_for("C to reach 100 pool sessions", LIMIT, || {
        (pool_of(2) >= 100).then_some(())
    });
    let rebalance = t2.elapsed();
    thread::sleep(Duration::from_secs(1));

    // The cloud dies: slices run out, no new pool session anywhere; the
    // sessions held stay. Then it comes back (quiet for one lease).
    cloud.stop();
    let cloud_down = Instant::now();
    for (i, sock) in sockets.iter().enumerate() {
        wait_for(&format!("{}'s lease to run out", SERIALS[i]), LIMIT, || {
            status(sock).filter(|s| s.cap.pooled == 0 && !s.pools[0].lease_valid)
        });
    }
    let held_when_down: Vec<u32> = (0..3).map(pool_of).collect();
    set(60, 15, 120);
    thread::sleep(Duration::from_millis(500));
    let grown: Vec<u32> = (0..3).map(pool_of).collect();
    assert!(
        grown.iter().zip(&held_when_down).all(|(g, h)| g <= h),
        "no pool admission without a lease: {held_when_down:?} -> {grown:?}"
    );
    cloud.start();
    let down_for = cloud_down.elapsed();
    let t3 = Instant::now();
    wait_for("A to grow again after the cloud restart", LIMIT, || {
        (pool_of(0) > held_when_down[0]).then_some(())
    });
    let after_restart = t3.elapsed();

    // A gateway is SIGKILLed and restarted: its sessions survive in its
    // journal, it starts without a lease.
    set(60, 30, 40);
    thread::sleep(Duration::from_secs(2));
    let b = daemons.lock().unwrap()[1].take().unwrap();
    b.kill9();
    thread::sleep(Duration::from_millis(300));
    let d = gws[1].start();
    daemons.lock().unwrap()[1] = Some(d);
    let t4 = Instant::now();
    wait_for("B to hold a lease again", LIMIT, || {
        status(&sockets[1]).filter(|s| s.pools[0].lease_valid)
    });
    let b_back = t4.elapsed();
    set(60, 50, 40);
    wait_for("B to grow to 50 pool sessions", LIMIT, || {
        (pool_of(1) >= 50).then_some(())
    });

    // Share undo: C leaves the pool; its sessions drain; only then does A
    // get its seats.
    cloud.run(&["license", "unshare", "LIC-POOL", "--from", SERIALS[2]]);
    wait_for("C to lose the pool", LIMIT, || {
        status(&sockets[2]).filter(|s| s.cap_total == BUILTIN)
    });
    set(100, 40, 0);
    let t5 = Instant::now();
    wait_for("A to get C's seats after C drained", LIMIT, || {
        (pool_of(0) >= 100).then_some(())
    });
    let after_unshare = t5.elapsed();
    assert_eq!(pool_of(2), 0);

    stop.store(true, Ordering::Relaxed);
    mon.join().unwrap();
    load.join().unwrap();
    let m = monitor.lock().unwrap();
    eprintln!(
        "pools: {} samples, max pool sum {} of {POOL}, {} admissions in {:?}",
        m.samples,
        m.max_sum,
        admits.load(Ordering::Relaxed),
        started.elapsed()
    );
    eprintln!(
        "pools: phase 1 A->100 in {phase1:?}; rebalancing A->C (C reaches 100) in {rebalance:?}; \
         cloud down {down_for:?}, A grows again {after_restart:?} after restart; \
         B restarted holds a lease after {b_back:?}; A takes C's seats {after_unshare:?} after unshare"
    );
    assert!(m.over.is_empty(), "pool oversubscribed: {:?}", m.over);
    assert!(m.max_sum <= POOL);
    assert!(m.samples > 100, "too few samples: {}", m.samples);
    drop(servers);
}

/// What the devcloud's allocator knows of `serial` in `pool` (None: not a
/// member any more, forgotten).
fn cloud_member(cloud: &DevCloud, pool: &str, serial: &str) -> Option<serde_json::Value> {
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
    let signer = Gateway::new(0);
    let mut cloud = DevCloud::new(&signer, 3600);
    cloud.run(&["device", "add", "ESG-PA", "--org", "ORG-T"]);
    cloud.run(&["device", "add", B, "--org", "ORG-T"]);
    cloud.run(&[
        "license", "add", "LIC-POOL", "--device", "ESG-PA", "--seats", "150",
    ]);
    cloud.run(&["license", "share", "LIC-POOL", "--with", B]);
    cloud.serve_args = vec!["--lease-ms".into(), "1500".into()];
    cloud.start();

    // B holds 2 built-in and 5 pool sessions.
    let gw = pool_gateway(&cloud, B);
    let sock = gw.socket();
    let daemon = gw.start();
    // (A freshly started cloud grants nothing beyond usage for one lease.)
    wait_for("B to hold a slice of at least 5", LIMIT, || {
        status(&sock).filter(|s| {
            s.pools
                .first()
                .is_some_and(|p| p.lease_valid && p.id == P && p.slice >= 5)
        })
    });
    let vpn = FakeServer::start(&sock);
    for i in 0..BUILTIN + 5 {
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
        status(&sock).filter(|s| s.cap_total == BUILTIN && s.in_use == BUILTIN + 5)
    });
    wait_for("the cloud to see B leave with 5 held", LIMIT, || {
        cloud_member(&cloud, P, B).filter(|m| m["member"] == false && m["reported"] == 5)
    });

    // B dies and comes back before its sessions end: it still knows the
    // pool it left and keeps reporting it.
    daemon.kill9();
    let daemon = gw.start();
    assert_eq!(daemon.status().in_use, BUILTIN + 5, "sessions survive");
    assert_eq!(daemon.status().cap.pooled, 0, "no slice after a restart");
    let resp = call(&sock, &Request::Release { key: "s0".into() }).unwrap();
    assert!(matches!(resp, Response::Release(r) if r.released));
    wait_for("the restarted B to report 4 pool sessions", LIMIT, || {
        cloud_member(&cloud, P, B).filter(|m| m["reported"] == 4)
    });
    assert!(
        remembered(&gw).is_some_and(|p| p[P].as_u64().is_some_and(|e| e >= epoch)),
        "the pool stays remembered while it drains"
    );

    // Drained: the cloud frees the seats and B forgets the pool.
    for i in 1..BUILTIN + 5 {
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
