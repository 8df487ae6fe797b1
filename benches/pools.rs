//! Pool demand-move benchmark (`cargo bench --bench pools`): how long
//! demand takes to move between gateways of a shared pool (docs/pools.md,
//! "Timing promise"). Prints figures, asserts nothing about speed; a pool
//! oversubscription is reported as a violation (and fails the run).
//!
//! Three real release `seatgate` daemons and the real devcloud share a
//! 150-seat pool (the setup of tests/it/pools.rs). 100 users connect at
//! gateway A; then 100 users arrive at C while A's leave one after the
//! other over 500 ms, each user retrying every 100 ms while refused, as
//! real users do. Printed per lease length
//! (3 s, 30 s, 300 s): the time until C holds 100 sessions, the largest
//! pool sum seen after every admission (sessions beyond each gateway's 2
//! built-in seats, counted by the load client, which holds every session)
//! and the samples above the pool (violations). Then the same with the
//! devcloud SIGKILLed 300 ms into the move and restarted 1 s later (a
//! restarted cloud grants nothing beyond reported usage for one lease
//! length, so that move completes about one lease after it is back).
//! Then the move again with the pool full: gateway B holds every pool seat
//! A does not, so C gets a seat only once A has given one back (the
//! largest pool sum is then the pool's seats, and never more).
//!
//! `SEATGATE_BENCH=move`, `=cloud-kill` or `=full` runs one part (unset or
//! `all`: all three); `SEATGATE_BENCH_LEASES=3,30` picks lease lengths in seconds
//! (default 3,30,300; the 300 s cloud-kill case alone takes over 5 min).
//! The load client is the VPN server its admissions name (kind `other`,
//! its own pid), so no relay process sits in between.

#[path = "../tests/it/util.rs"]
mod util;

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/cloud.rs"]
mod cloud;

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/pools.rs"]
mod pools;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use seatgate::admission::protocol::{AdmitRequest, Request, ServerKind, ServerRef};

use pools::{pool_cloud_leasing, pool_gateway, status, BUILTIN, POOL, SERIALS};
use util::{admitted, call, wait_for, Daemon, Gateway};

const USERS: usize = 100;
/// A refused user tries again after this.
const RETRY: Duration = Duration::from_millis(100);
const GOAL: Duration = Duration::from_secs(2);
/// A's users leave one after the other over this, while C's arrive.
const LEAVING: Duration = Duration::from_millis(500);
const KILL_AFTER: Duration = Duration::from_millis(300);
const DOWN_FOR: Duration = Duration::from_secs(1);
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

/// How a move is run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Seats are free in the pool.
    Free,
    /// The cloud is SIGKILLed mid-move.
    CloudKill,
    /// B holds every pool seat A does not.
    Full,
}

struct User {
    gw: usize,
    key: String,
    user: String,
    remote: String,
    held: bool,
    next_try: Instant,
    /// When the user disconnects (None: stays).
    leave_at: Option<Instant>,
}

/// The load client: every user's session, the pool sum after every
/// admission.
struct Load {
    sockets: Vec<PathBuf>,
    users: Vec<User>,
    held: [u32; 3],
    max_sum: u32,
    violations: u32,
    refusals: u64,
    next_id: usize,
}

impl Load {
    fn new(sockets: Vec<PathBuf>) -> Load {
        Load {
            sockets,
            users: Vec::new(),
            held: [0; 3],
            max_sum: 0,
            violations: 0,
            refusals: 0,
            next_id: 0,
        }
    }

    fn arrive(&mut self, gw: usize, n: usize) {
        let now = Instant::now();
        for _ in 0..n {
            let i = self.next_id;
            self.next_id += 1;
            self.users.push(User {
                gw,
                key: format!("{}-{i}", SERIALS[gw]),
                user: format!("user{i}"),
                remote: format!("198.51.{}.{}", i / 250, i % 250 + 1),
                held: false,
                next_try: now,
                leave_at: None,
            });
        }
    }

    /// The users of `gw` disconnect one after the other over `over`.
    fn leave(&mut self, gw: usize, over: Duration) {
        let now = Instant::now();
        let users = self.users.iter_mut().filter(|u| u.gw == gw);
        let step = over / USERS as u32;
        for (i, u) in users.enumerate() {
            u.leave_at = Some(now + step * i as u32);
        }
    }

    fn held(&self, gw: usize) -> u32 {
        self.held[gw]
    }

    /// One pass: every waiting user whose turn it is tries once.
    fn step(&mut self) {
        let me = std::process::id();
        for i in 0..self.users.len() {
            let now = Instant::now();
            let u = &self.users[i];
            if u.leave_at.is_some_and(|t| t <= now) {
                if u.held {
                    let req = Request::Release { key: u.key.clone() };
                    call(&self.sockets[u.gw], &req).expect("release answered");
                    self.held[u.gw] -= 1;
                    self.users[i].held = false;
                }
                continue;
            }
            if u.held || u.next_try > now {
                continue;
            }
            let req = Request::Admit(AdmitRequest {
                key: u.key.clone(),
                user: u.user.clone(),
                group: String::new(),
                server: ServerRef {
                    kind: ServerKind::Other,
                    pid: me,
                },
                remote: u.remote.clone(),
            });
            let gw = u.gw;
            let ok = call(&self.sockets[gw], &req).is_ok_and(|r| admitted(&r));
            let u = &mut self.users[i];
            if ok {
                u.held = true;
                self.held[gw] += 1;
                let sum: u32 = self.held.iter().map(|h| h.saturating_sub(BUILTIN)).sum();
                self.max_sum = self.max_sum.max(sum);
                if sum > POOL {
                    self.violations += 1;
                }
            } else {
                self.refusals += 1;
                u.next_try = now + RETRY;
            }
        }
    }

    /// Runs the users until `done` or `limit`; the time it took, if done.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Load) -> bool) -> Option<Duration> {
        let start = Instant::now();
        loop {
            self.step();
            if done(self) {
                return Some(start.elapsed());
            }
            if start.elapsed() > limit {
                return None;
            }
            // Pacing (not synchronisation): users act over time.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

struct Rig {
    cloud: cloud::DevCloud,
    _gws: Vec<Gateway>,
    _daemons: Vec<Daemon>,
    load: Load,
}

fn rig(lease_ms: u64) -> Rig {
    let cloud = pool_cloud_leasing(&SERIALS, lease_ms);
    let gws: Vec<Gateway> = SERIALS.iter().map(|s| pool_gateway(&cloud, s)).collect();
    let daemons: Vec<Daemon> = gws.iter().map(|g| g.start()).collect();
    let sockets: Vec<PathBuf> = gws.iter().map(|g| g.socket()).collect();
    for (i, sock) in sockets.iter().enumerate() {
        wait_for(
            &format!("{} to hold a slice lease", SERIALS[i]),
            Duration::from_secs(30),
            || status(sock).filter(|s| s.pools.first().is_some_and(|p| p.lease_valid)),
        );
    }
    Rig {
        cloud,
        _gws: gws,
        _daemons: daemons,
        load: Load::new(sockets),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One move at `lease_ms`.
fn one_move(lease_ms: u64, variant: Variant) -> u32 {
    let kill = variant == Variant::CloudKill;
    let lease = Duration::from_millis(lease_ms);
    let limit = lease + Duration::from_secs(60);
    let mut rig = rig(lease_ms);
    let load = &mut rig.load;
    load.arrive(A, USERS);
    let setup = load.run_until(limit, |l| l.held(A) == USERS as u32);
    let Some(setup) = setup else {
        println!(
            "lease {} s: A never reached {USERS} sessions (holds {})",
            lease.as_secs(),
            load.held(A)
        );
        return load.violations;
    };
    if variant == Variant::Full {
        // B takes the rest of the pool (its built-in seats on top).
        let rest = POOL - (USERS as u32 - BUILTIN);
        load.arrive(B, (rest + BUILTIN) as usize);
        if load
            .run_until(limit, |l| l.held(B) == rest + BUILTIN)
            .is_none()
        {
            println!(
                "lease {} s: B never filled the pool (holds {})",
                lease.as_secs(),
                load.held(B)
            );
            return load.violations;
        }
    }
    // Pacing: the pool settles under A's demand before it moves.
    load.run_until(Duration::from_secs(1), |_| false);
    let t0 = Instant::now();
    load.arrive(C, USERS);
    load.leave(A, LEAVING);
    let reached = |l: &Load| l.held(C) == USERS as u32;
    let mut back = None;
    if kill {
        load.run_until(KILL_AFTER, reached);
        rig.cloud.stop();
        load.run_until(DOWN_FOR, reached);
        rig.cloud.start();
        back = Some(t0.elapsed());
    }
    let moved = if reached(load) {
        Some(t0.elapsed())
    } else {
        load.run_until(limit, reached).map(|_| t0.elapsed())
    };
    let what = match (moved, back) {
        (Some(m), None) => format!(
            "{}demand moved in {} ({})",
            if variant == Variant::Full { "pool full: " } else { "" },
            secs(m),
            if m < GOAL { "goal < 2 s MET" } else { "goal < 2 s NOT MET" }
        ),
        (Some(m), Some(b)) => format!(
            "cloud SIGKILLed {} into the move, back {} later: moved in {} ({} after the cloud was back)",
            secs(KILL_AFTER),
            secs(DOWN_FOR),
            secs(m),
            secs(m.saturating_sub(b))
        ),
        (None, _) => format!(
            "demand did NOT move within {} (C holds {})",
            secs(limit),
            load.held(C)
        ),
    };
    println!(
        "lease {:>3} s: {what}; A to {USERS} took {}; max pool sum {} of {POOL}, {} violations, {} refusals",
        lease.as_secs(),
        secs(setup),
        load.max_sum,
        load.violations,
        load.refusals
    );
    load.violations
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a listing: nothing to list.
    }
    let leases: Vec<u64> = std::env::var("SEATGATE_BENCH_LEASES")
        .unwrap_or_else(|_| "3,30,300".into())
        .split(',')
        .map(|s| {
            let secs: u64 = s.trim().parse().unwrap_or_else(|_| {
                panic!("SEATGATE_BENCH_LEASES: {s:?} is not a number of seconds")
            });
            secs * 1000
        })
        .collect();
    let variants = match std::env::var("SEATGATE_BENCH").unwrap_or_default().as_str() {
        "" | "all" => vec![Variant::Free, Variant::CloudKill, Variant::Full],
        "move" => vec![Variant::Free],
        "cloud-kill" => vec![Variant::CloudKill],
        "full" => vec![Variant::Full],
        other => panic!(
            "SEATGATE_BENCH={other:?}: use move, cloud-kill, full or all (or leave it unset)"
        ),
    };
    println!(
        "pool of {POOL} seats, 3 gateways; {USERS} users move from A to C, retrying every {} ms",
        RETRY.as_millis()
    );
    let mut violations = 0;
    for variant in variants {
        for &lease in &leases {
            violations += one_move(lease, variant);
        }
    }
    assert_eq!(violations, 0, "the pool was oversubscribed");
}
