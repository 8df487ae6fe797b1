//! The real daemon: exact admission under concurrency, restart safety,
//! dead-server reaping, bad input, peer rights, signals.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use nix::sys::signal::Signal;
use seatgate::admission::protocol::{DenyReason, Request, Response};

use super::util::*;

/// `conns` connections each send `per_conn` admits on one persistent
/// connection, all released at once by a barrier; returns how many got in.
fn storm(
    socket: &std::path::Path,
    server: &FakeServer,
    conns: usize,
    per_conn: usize,
    tag: &str,
) -> usize {
    let barrier = Arc::new(Barrier::new(conns));
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let socket = socket.to_path_buf();
            let barrier = barrier.clone();
            let reqs: Vec<Vec<u8>> = (0..per_conn)
                .map(|i| {
                    seatgate::admission::protocol::encode_request(
                        &server.admit(&format!("{tag}-{c}-{i}")),
                    )
                })
                .collect();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                barrier.wait();
                let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
                let mut admitted = 0;
                for req in reqs {
                    s.write_all(&req).unwrap();
                    let mut line = String::new();
                    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
                    let resp: Response = serde_json::from_str(&line).unwrap();
                    admitted += usize::from(admitted_resp(&resp));
                }
                admitted
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

fn admitted_resp(r: &Response) -> bool {
    admitted(r)
}

#[test]
fn two_thousand_concurrent_admits_against_cap_32_admit_exactly_32() {
    let gw = Gateway::new(30);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    for round in 0..3 {
        let got = storm(server.socket(), &server, 100, 20, &format!("r{round}"));
        assert_eq!(got, 32, "round {round}");
        let st = d.status();
        assert_eq!((st.in_use, st.cap_total, st.free), (32, 32, 0));
        for s in &st.sessions {
            call(&d.socket, &Request::Release { key: s.key.clone() }).unwrap();
        }
        assert_eq!(d.status().in_use, 0);
    }
    assert_eq!(d.status().denials, 3 * (2000 - 32));
}

#[test]
fn an_admit_whose_hook_gave_up_before_the_answer_holds_no_seat() {
    let gw = Gateway::new(0);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    // A stalled daemon: the hook's request waits in the socket queue, the
    // hook passes its deadline, rejects and exits.
    d.pause();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(&seatgate::admission::protocol::encode_request(
        &server.admit("gave-up"),
    ))
    .unwrap();
    drop(s);
    d.signal(Signal::SIGCONT);
    // A request after it on another connection is answered after it was served.
    assert!(admitted(&server.try_call(&server.admit("live")).unwrap()));
    wait_for(
        "the unanswered admission to be undone",
        Duration::from_secs(5),
        || {
            (d.status()
                .sessions
                .iter()
                .map(|s| s.key.as_str())
                .collect::<Vec<_>>()
                == ["live"])
            .then_some(())
        },
    );
}

#[test]
fn churn_ends_with_in_use_equal_to_sessions_held() {
    let gw = Gateway::new(8);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    let handles: Vec<_> = (0..8)
        .map(|c| {
            let socket = d.socket.clone();
            let reqs: Vec<Request> = (0..200)
                .map(|i| server.admit(&format!("c{c}-{}", i % 7)))
                .collect();
            std::thread::spawn(move || {
                let mut held = std::collections::HashSet::new();
                for (i, req) in reqs.into_iter().enumerate() {
                    let Request::Admit(a) = &req else {
                        unreachable!()
                    };
                    if i % 3 == 2 {
                        call(&socket, &Request::Release { key: a.key.clone() }).unwrap();
                        held.remove(&a.key);
                    } else if admitted(&call(&socket, &req).unwrap()) {
                        held.insert(a.key.clone());
                    }
                }
                held
            })
        })
        .collect();
    let held: usize = handles.into_iter().map(|h| h.join().unwrap().len()).sum();
    let st = d.status();
    assert_eq!(st.in_use as usize, held);
    assert!(st.in_use <= st.cap_total);
}

#[test]
fn repeated_admit_and_rejected_release_do_not_miscount() {
    let gw = Gateway::new(0);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    assert!(admitted(&server.try_call(&server.admit("a")).unwrap()));
    assert!(admitted(&server.try_call(&server.admit("b")).unwrap()));
    match server.try_call(&server.admit("a")).unwrap() {
        Response::Admit(r) => assert!(r.admitted && r.again && r.in_use == 2),
        other => panic!("{other:?}"),
    }
    match server.try_call(&server.admit("c")).unwrap() {
        Response::Admit(r) => {
            assert_eq!(r.reason, Some(DenyReason::CapReached));
            assert_eq!(r.message.as_deref(), Some("all 2 seats are in use"));
        }
        other => panic!("{other:?}"),
    }
    let st = d.status();
    assert_eq!((st.peak, st.denials), (2, 1));
    assert_eq!(
        st.daily_peaks.last().map(|p| (p.day, p.peak)),
        Some((st.sessions[1].since.date_naive(), 2))
    );
    // OpenVPN reports the rejected client's disconnect too.
    match call(&d.socket, &Request::Release { key: "c".into() }).unwrap() {
        Response::Release(r) => assert!(!r.released && r.in_use == 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sigkill_during_a_storm_then_restart_keeps_the_count_exact() {
    let gw = Gateway::new(48);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    let socket = server.socket().to_path_buf();
    let reqs: Vec<Request> = (0..400).map(|i| server.admit(&format!("k{i}"))).collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let writer = std::thread::spawn({
        let answered = answered.clone();
        move || {
            let mut acked = Vec::new();
            for req in reqs {
                let Request::Admit(a) = &req else {
                    unreachable!()
                };
                match call(&socket, &req) {
                    Ok(r) if admitted(&r) => acked.push(a.key.clone()),
                    Ok(_) => {}
                    Err(_) => break,
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            acked
        }
    });
    // Kill while the storm is under way: some admissions answered, most not.
    wait_for("the storm to get going", Duration::from_secs(10), || {
        (answered.load(Ordering::Relaxed) >= 10).then_some(())
    });
    d.kill9();
    let acked = writer.join().unwrap();
    let d = gw.start();
    let st = d.status();
    // Every acknowledged admission survived; at most one more was recorded
    // and killed before its answer went out.
    assert!(
        st.in_use as usize >= acked.len() && st.in_use as usize <= acked.len() + 1,
        "in use {} acked {}",
        st.in_use,
        acked.len()
    );
    for key in &acked {
        assert!(st.sessions.iter().any(|s| &s.key == key), "lost {key}");
    }
    // And the cap still holds exactly after the restart.
    let more = storm(server.socket(), &server, 10, 10, "after");
    assert_eq!(d.status().in_use, 50);
    assert_eq!(st.in_use as usize + more, 50);
}

#[test]
fn killed_vpn_server_frees_its_seats_within_two_seconds() {
    let gw = Gateway::new(10);
    let d = gw.start();
    let mut doomed = FakeServer::start(&gw.socket());
    let other = FakeServer::start(&gw.socket());
    for i in 0..5 {
        assert!(admitted(
            &doomed.try_call(&doomed.admit(&format!("d{i}"))).unwrap()
        ));
    }
    assert!(admitted(&other.try_call(&other.admit("o")).unwrap()));
    assert_eq!(d.status().in_use, 6);
    doomed.kill();
    let started = std::time::Instant::now();
    wait_for(
        "seats of the killed server to come back",
        Duration::from_secs(2),
        || (d.status().in_use == 1).then_some(()),
    );
    eprintln!("freed in {:?}", started.elapsed());
    assert_eq!(d.status().sessions[0].key, "o");
}

#[test]
fn seats_of_a_server_that_died_while_the_daemon_was_down_are_freed_at_start() {
    let gw = Gateway::new(10);
    let d = gw.start();
    let mut doomed = FakeServer::start(&gw.socket());
    doomed.try_call(&doomed.admit("x")).unwrap();
    d.kill9();
    doomed.kill();
    let d = gw.start();
    assert_eq!(d.status().in_use, 0);
}

#[test]
fn unknown_server_pid_is_denied() {
    let gw = Gateway::new(0);
    let d = gw.start();
    let mut gone = FakeServer::start(&gw.socket());
    let req = gone.admit("x");
    gone.kill();
    match call(&d.socket, &req).unwrap() {
        Response::Admit(r) => assert_eq!(r.reason, Some(DenyReason::UnknownServer)),
        other => panic!("{other:?}"),
    }
}

fn raw_exchange(socket: &std::path::Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn malformed_input_gets_errors_while_others_are_served() {
    let gw = Gateway::with_config(0, "idle_timeout_ms = 300");
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    let out = raw_exchange(&d.socket, b"garbage\n\xff\xfe\n{\"v\":1,\"op\":\"fly\"}\n{\"v\":9,\"op\":\"ping\"}\n{\"v\":1,\"op\":\"admit\"}\n{\"v\":1,\"op\":\"ping\"}\n");
    let codes: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {out:?}"));
            v["error"]["code"]
                .as_str()
                .map_or_else(|| "pong".to_string(), str::to_string)
        })
        .collect();
    assert_eq!(
        codes,
        [
            "bad_request",
            "bad_request",
            "unknown_op",
            "unsupported_version",
            "bad_request",
            "pong"
        ]
    );

    // An overlong line is refused before it is buffered, and the connection closed.
    let long = vec![b'x'; 100_000];
    let out = raw_exchange(&d.socket, &long);
    assert!(out.contains("\"line_too_long\""), "{out}");

    // A half-sent line from a silent peer times out, while another client is served.
    let mut slow = UnixStream::connect(&d.socket).unwrap();
    slow.write_all(b"{\"v\":1,\"op\":").unwrap();
    assert!(admitted(&server.try_call(&server.admit("k")).unwrap()));
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    slow.read_to_string(&mut out).unwrap();
    assert!(out.contains("\"timeout\""), "{out}");
    assert_eq!(d.status().in_use, 1);
}

#[test]
fn a_peer_that_is_not_allowed_cannot_admit_or_read() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs its peer as nobody (uid 65534), which needs root; run `sudo scripts/test`"
    );
    let gw = Gateway::with_config(
        0,
        "socket_mode = \"0666\"\nvpn_users = []\noperator_groups = []",
    );
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    std::fs::set_permissions(
        gw.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let as_nobody = |args: &[&str], envs: &[(&str, String)]| {
        std::process::Command::new(bin())
            .args(args)
            .env_clear()
            .envs(envs.iter().map(|(k, v)| (*k, v.clone())))
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let sock = d.socket.to_string_lossy().into_owned();
    let out = as_nobody(
        &["hook", "ocserv", "--socket", &sock],
        &[
            ("REASON", "connect".into()),
            ("ID", server.pid().to_string()),
            ("USERNAME", "eve".into()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this user may not admit"), "{err}");
    let out = as_nobody(&["status", "--socket", &sock], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not read status"));
    assert_eq!(d.status().in_use, 0);
    // Nor end a session, by key or by user.
    assert!(admitted(&server.try_call(&server.admit("k1")).unwrap()));
    for args in [
        &["evict", "k1", "--socket", &sock][..],
        &["evict", "--user", "user-k1", "--socket", &sock],
    ] {
        let out = as_nobody(args, &[]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("may not evict sessions"), "{err}");
    }
    assert_eq!(d.status().in_use, 1);
}

#[test]
fn status_is_open_to_everyone_when_configured_public() {
    let gw = Gateway::with_config(0, "status_public = true\nvpn_users = []");
    let d = gw.start();
    std::fs::set_permissions(
        gw.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o666
    );
    let out = std::process::Command::new(bin())
        .args(["status", "--json", "--socket"])
        .arg(&d.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cap_total"], 2);
}

#[test]
fn sighup_reloads_licenses_without_dropping_sessions_and_drains_over_cap() {
    let gw = Gateway::new(4);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    for i in 0..6 {
        assert!(admitted(
            &server.try_call(&server.admit(&format!("k{i}"))).unwrap()
        ));
    }
    // The license moved away: generation 2 grants nothing.
    gw.write_bundle(&bundle(2, vec![]));
    d.signal(Signal::SIGHUP);
    wait_for("the reload", Duration::from_secs(5), || {
        (d.status().cap_total == 2).then_some(())
    });
    let st = d.status();
    assert_eq!((st.in_use, st.over_cap_by), (6, 4));
    match server.try_call(&server.admit("new")).unwrap() {
        Response::Admit(r) => assert_eq!(r.reason, Some(DenyReason::OverCap)),
        other => panic!("{other:?}"),
    }
    let out = gw.cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OVER CAP BY 4"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A replayed older bundle is refused on reload.
    gw.write_bundle(&bundle(1, vec![spc("LIC-1", 4)]));
    d.signal(Signal::SIGHUP);
    // The refusal in status is the proof that the reload ran.
    let st = wait_for(
        "the reload to refuse the older bundle",
        Duration::from_secs(5),
        || {
            let st = d.status();
            st.warnings
                .iter()
                .any(|w| w.contains("older than the accepted generation 2"))
                .then_some(st)
        },
    );
    assert_eq!(st.cap_total, 2);
}

#[test]
fn sigterm_stops_cleanly_and_restart_keeps_sessions() {
    let gw = Gateway::new(4);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    server.try_call(&server.admit("a")).unwrap();
    d.signal(Signal::SIGTERM);
    let (status, _) = d.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(!gw.socket().exists(), "socket file removed");
    let d = gw.start();
    assert_eq!(d.status().in_use, 1);
}

#[test]
fn a_peer_that_never_reads_loses_its_connection_not_the_daemon() {
    let gw = Gateway::with_config(0, "idle_timeout_ms = 300\nmax_connections = 2");
    let d = gw.start();
    // Two peers pipeline pings and never read their answers: both slots busy.
    let stuck: Vec<UnixStream> = (0..2)
        .map(|_| {
            let s = UnixStream::connect(&d.socket).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut w = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let ping = b"{\"v\":1,\"op\":\"ping\"}\n".repeat(1000);
                while w.write_all(&ping).is_ok() {}
            });
            s
        })
        .collect();
    // Their answers cannot be written; within the idle timeout they are
    // dropped and a third client is served again.
    wait_for("a free connection slot", Duration::from_secs(5), || {
        matches!(
            seatgate::admission::client::call(
                &d.socket,
                &Request::Ping,
                Duration::from_millis(500)
            ),
            Ok(Response::Pong(_))
        )
        .then_some(())
    });
    d.signal(Signal::SIGTERM);
    let (status, _) = d.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    drop(stuck);
}

/// Hardening: a VPN server user (not root) cannot take over or release
/// another server process's session, nor name a server that is not its
/// own ancestor; operators still evict anything.
#[test]
fn only_the_server_that_holds_a_session_may_release_or_readmit_it() {
    require_root("runs its VPN servers as nobody (uid 65534)");
    const NOBODY: u32 = 65534;
    let gw = Gateway::with_config(0, "socket_mode = \"0666\"\nvpn_users = [\"nobody\"]");
    std::fs::set_permissions(
        gw.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let d = gw.start();
    let mut old = FakeServer::start_as(&gw.socket(), Some(NOBODY));
    let new = FakeServer::start_as(&gw.socket(), Some(NOBODY));
    assert!(admitted(&old.try_call(&old.admit("k")).unwrap()));
    // Another server process cannot take over (or release) a live session.
    match new.try_call(&new.admit("k")).unwrap() {
        Response::Admit(r) => assert_eq!(r.reason, Some(DenyReason::KeyHeld), "{r:?}"),
        other => panic!("{other:?}"),
    }
    match new.try_call(&Request::Release { key: "k".into() }).unwrap() {
        Response::Error(e) => assert!(e.error.message.contains("another VPN server"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // Nor can it name a server that is not its own ancestor: pid 1, or
    // the other server.
    for pid in [1, old.pid()] {
        let mut req = new.admit("stranger");
        if let Request::Admit(a) = &mut req {
            a.server.pid = pid;
        }
        match new.try_call(&req).unwrap() {
            Response::Admit(r) => {
                assert_eq!(
                    r.reason,
                    Some(DenyReason::UnknownServer),
                    "pid {pid}: {r:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
    let st = d.status();
    assert_eq!((st.in_use, st.sessions[0].server_pid), (1, old.pid()));
    // Its own server's hooks may release it.
    match old.try_call(&Request::Release { key: "k".into() }).unwrap() {
        Response::Release(r) => assert!(r.released, "{r:?}"),
        other => panic!("{other:?}"),
    }
    assert!(admitted(&old.try_call(&old.admit("k")).unwrap()));
    // Once the holder is gone, the key is a new session of the new server
    // (decided anew: not "again"), even before the reaper noticed.
    old.kill();
    match new.try_call(&new.admit("k")).unwrap() {
        Response::Admit(r) => assert!(r.admitted && !r.again && r.in_use == 1, "{r:?}"),
        other => panic!("{other:?}"),
    }
    let st = d.status();
    assert_eq!((st.in_use, st.sessions[0].server_pid), (1, new.pid()));
    // An operator (root here) evicts any session.
    let evict = Request::Evict {
        key: Some("k".into()),
        user: None,
    };
    match call(&d.socket, &evict).unwrap() {
        Response::Release(r) => {
            assert!(r.released, "{r:?}");
            assert_eq!(r.sessions.unwrap()[0]["freed"], true);
        }
        other => panic!("{other:?}"),
    }
}

/// `evict --user` names one user, matched regardless of ASCII case, and
/// never the empty name: a mistyped `--user "$UNSET"` must not end every
/// session that has no user name.
#[test]
fn evict_by_user_refuses_the_empty_name_and_matches_regardless_of_case() {
    let gw = Gateway::new(3);
    let d = gw.start();
    let server = FakeServer::start(&gw.socket());
    for (key, user) in [("k1", ""), ("k2", ""), ("k3", "Alice")] {
        let mut req = server.admit(key);
        if let Request::Admit(a) = &mut req {
            a.user = user.into();
        }
        assert!(admitted(&server.try_call(&req).unwrap()));
    }
    let out = gw.cli(&["evict", "--user", ""]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"user\" (1 to"), "{err}");
    assert_eq!(d.status().in_use, 3, "nothing evicted");
    let out = gw.cli(&["evict", "--user", "alice"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("seat freed"), "{text}");
    let st = d.status();
    assert_eq!(st.in_use, 2);
    assert!(
        st.sessions.iter().all(|s| s.user.is_empty()),
        "{:?}",
        st.sessions
    );
}
