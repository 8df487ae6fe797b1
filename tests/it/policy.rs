//! `[policy]` on the real binary: check-config refuses each contradiction,
//! a storm of concurrent admissions keeps every rule exactly, status and
//! check show the policy and a cap below the seats reserved, and a SIGHUP
//! reload replaces the policy in force.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use nix::sys::signal::Signal;
use seatgate::admission::protocol::{
    AdmitRequest, DenyReason, Request, Response, ServerKind, ServerRef,
};

use super::util::*;

fn admit(server: &FakeServer, key: &str, user: &str, group: &str) -> Request {
    Request::Admit(AdmitRequest {
        key: key.into(),
        user: user.into(),
        server: ServerRef {
            kind: ServerKind::Other,
            pid: server.pid(),
        },
        remote: "192.0.2.7".into(),
        group: group.into(),
    })
}

/// The outcome of one admit: None when admitted, else the reason.
fn decision(resp: Response) -> Option<DenyReason> {
    match resp {
        Response::Admit(a) if a.admitted => None,
        Response::Admit(a) => Some(a.reason.expect("a denial has its reason")),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[test]
fn check_config_refuses_each_contradiction_by_key() {
    let gw = Gateway::new(0);
    gw.write(&gw.config().policy(
        "[policy]\nmax_sessions_per_user = 0\n\
         [[policy.group]]\nname = \"oncall\"\nusers = [\"alice\"]\nreserved = 3\nmax = 2\n\
         [[policy.group]]\nname = \"night\"\nusers = [\"alice\"]\n\
         [[policy.group]]\nname = \"empty\"\n",
    ));
    let out = gw.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "has 4 problem(s)",
        "0 would refuse every session; set 1 or more, or remove the key for no limit",
        "policy.max_sessions_per_user (line ",
        "policy.group[0].max: 2 is below the entry's reserved 3",
        "policy.group[1].users: user \"alice\" is also in entry \"oncall\" (names match regardless of case); a user belongs to one entry only",
        "policy.group[2]: entry \"empty\" has no members; list users = [..] or groups = [..]",
    ] {
        assert!(err.contains(want), "{want:?} missing in:\n{err}");
    }
    // The daemon refuses to start on it, and a fixed file passes.
    let (status, log) = gw.spawn("warn").wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(log.contains("policy.max_sessions_per_user"), "{log}");
    gw.write(&gw.config().policy(
        "[policy]\nmax_sessions_per_user = 2\n[[policy.group]]\nname = \"oncall\"\nusers = [\"alice\"]\nreserved = 1\n",
    ));
    let out = gw.cli(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// cap 12: `oncall` (user oc) has 2 seats reserved, `ext` (group) may hold
/// 3, each user at most 3 sessions. Demand is built so that every rule,
/// and only the rules, turns requests away, whatever the order: the exact
/// counts hold however the 41 admissions interleave.
#[test]
fn concurrent_admissions_keep_every_rule_exactly() {
    let gw = Gateway::new(10);
    gw.write(&gw.config().policy(
        "[policy]\nmax_sessions_per_user = 3\n\
         [[policy.group]]\nname = \"oncall\"\nusers = [\"oc\"]\nreserved = 2\n\
         [[policy.group]]\nname = \"ext\"\ngroups = [\"ext\"]\nmax = 3\n",
    ));
    let d = gw.start();
    // Two servers: the user limit holds across them.
    let servers = [
        FakeServer::start(&gw.socket()),
        FakeServer::start(&gw.socket()),
    ];
    let mut asks: Vec<(String, String, String)> = Vec::new();
    for u in ["u0", "u1"] {
        for i in 0..8 {
            asks.push((format!("{u}-{i}"), u.into(), String::new()));
        }
    }
    for i in 0..10 {
        asks.push((format!("e{i}"), format!("e{i}"), "ext".into()));
    }
    for i in 0..7 {
        asks.push((format!("oc-{i}"), "oc".into(), String::new()));
    }
    let servers = Arc::new(servers);
    let start = Arc::new(Barrier::new(asks.len()));
    let threads: Vec<_> = asks
        .into_iter()
        .enumerate()
        .map(|(n, (key, user, group))| {
            let (servers, start) = (servers.clone(), start.clone());
            std::thread::spawn(move || {
                let server = &servers[n % 2];
                let req = admit(server, &key, &user, &group);
                start.wait();
                (user, decision(server.try_call(&req).unwrap()))
            })
        })
        .collect();
    let mut got: BTreeMap<(String, Option<&str>), u32> = BTreeMap::new();
    for t in threads {
        let (user, d) = t.join().unwrap();
        let who = if user.starts_with('e') {
            "ext".into()
        } else {
            user
        };
        *got.entry((who, d.map(|r| r.as_str()))).or_default() += 1;
    }
    let want: BTreeMap<(String, Option<&str>), u32> = [
        (("ext", None), 3),
        (("ext", Some("group_limit")), 7),
        (("oc", None), 3),
        (("oc", Some("user_limit")), 4),
        (("u0", None), 3),
        (("u0", Some("user_limit")), 5),
        (("u1", None), 3),
        (("u1", Some("user_limit")), 5),
    ]
    .into_iter()
    .map(|((w, r), n)| ((w.to_string(), r), n))
    .collect();
    assert_eq!(got, want);
    let st = d.status();
    assert_eq!((st.in_use, st.cap_total), (12, 12));
    assert_eq!(st.denials, 21);
    let p = st.policy;
    assert_eq!(
        (p.groups[0].in_use, p.groups[1].in_use, p.unfilled),
        (3, 3, 0)
    );

    // Full: anyone else is refused for want of seats.
    let s = &servers[0];
    assert_eq!(
        decision(s.try_call(&admit(s, "late-0", "late", "")).unwrap()),
        Some(DenyReason::CapReached)
    );
    // Two of oc's sessions end: one of its reserved seats is unfilled again.
    for key in ["oc-0", "oc-1", "oc-2", "oc-3", "oc-4", "oc-5", "oc-6"] {
        let held = d
            .status()
            .sessions
            .iter()
            .filter(|s| s.user == "oc")
            .count();
        if held == 1 {
            break;
        }
        let _ = s.try_call(&Request::Release { key: key.into() });
        let _ = servers[1].try_call(&Request::Release { key: key.into() });
    }
    let st = d.status();
    assert_eq!((st.in_use, st.policy.unfilled), (10, 1));
    assert_eq!(
        decision(s.try_call(&admit(s, "late-1", "late", "")).unwrap()),
        None,
        "one free seat beyond the unfilled reservation"
    );
    assert_eq!(
        decision(s.try_call(&admit(s, "late-2", "late", "")).unwrap()),
        Some(DenyReason::Reserved)
    );
    assert_eq!(
        decision(s.try_call(&admit(s, "oc-back", "oc", "")).unwrap()),
        None,
        "the member takes the reserved seat"
    );
    assert_eq!(d.status().in_use, 12);
}

#[test]
fn status_and_check_show_the_policy_and_a_cap_below_the_reservations() {
    let gw = Gateway::new(0); // cap 2
    gw.write(&gw.config().policy(
        "[policy]\nmax_sessions_per_user = 1\nat_user_limit = \"replace_oldest\"\n\
         [[policy.group]]\nname = \"oncall\"\nusers = [\"alice\", \"bob\"]\nreserved = 3\n\
         [[reconcile]]\nkind = \"openvpn\"\nmanagement = \"mgmt.sock\"\ninterval_ms = 3600000\n",
    ));
    let d = gw.start();
    let out = gw.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("policy: at most 1 sessions per user (a new one beyond is admitted in place of the user's oldest);"),
        "{text}"
    );
    assert!(
        text.contains("3 seats reserved, 3 of them not taken"),
        "{text}"
    );
    assert!(
        text.contains("  group oncall: reserved 3, max -, in use 0"),
        "{text}"
    );
    assert!(
        text.contains("** WARNING: the cap in force (2) is below the 3 seats reserved by [policy]"),
        "{text}"
    );
    let out = gw.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"]["at_user_limit"], "replace_oldest");
    assert_eq!(v["policy"]["groups"][0]["reserved"], 3);
    let out = gw.cli(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("the cap in force (2) is below the 3 seats reserved"));

    // A reload without the reservation: no warning, check OK, the new
    // limit in force for the next admission.
    gw.write(&gw.config().policy("[policy]\nmax_sessions_per_user = 2\n"));
    d.signal(Signal::SIGHUP);
    wait_for(
        "the reloaded policy in status",
        Duration::from_secs(10),
        || {
            Some(d.status().policy)
                .filter(|p| p.max_sessions_per_user == Some(2) && p.groups.is_empty())
        },
    );
    assert_eq!(gw.cli(&["check"]).status.code(), Some(0));
    let s = FakeServer::start(&gw.socket());
    for (key, user, want) in [
        ("a", "alice", None),
        ("b", "bob", None),
        ("c", "alice", Some(DenyReason::CapReached)),
    ] {
        assert_eq!(
            decision(s.try_call(&admit(&s, key, user, "")).unwrap()),
            want
        );
    }
    // Back to a limit of 1 with refuse: alice's third is user_limit now.
    gw.write(&gw.config().policy("[policy]\nmax_sessions_per_user = 1\n"));
    d.signal(Signal::SIGHUP);
    wait_for(
        "the reloaded policy in status",
        Duration::from_secs(10),
        || Some(d.status().policy).filter(|p| p.max_sessions_per_user == Some(1)),
    );
    assert_eq!(
        decision(s.try_call(&admit(&s, "c", "alice", "")).unwrap()),
        Some(DenyReason::UserLimit)
    );
}

/// Attack: `replace_oldest` while the server's management interface is
/// down (an OpenVPN restarting its management, a wrong path). The replaced
/// session's tunnel stays up; its seat had gone to the new session, so the
/// gateway counted one session less than it carried, each time. A
/// replaced session whose end is not confirmed counts again.
#[test]
fn a_replaced_session_the_server_does_not_end_keeps_counting() {
    let gw = Gateway::new(3);
    gw.write(&gw.config().policy(concat!(
        "[policy]\nmax_sessions_per_user = 1\nat_user_limit = \"replace_oldest\"\n",
        "[[reconcile]]\nkind = \"openvpn\"\nmanagement = \"/nonexistent/mgmt.sock\"\ninterval_ms = 3600000\n",
    )));
    let d = gw.start();
    let server = FakeServer::start_openvpn(&gw.socket());
    let alice = |key: &str| {
        let mut req = server.admit(key);
        if let Request::Admit(a) = &mut req {
            a.user = "alice".into();
        }
        decision(server.try_call(&req).unwrap())
    };
    assert_eq!(alice("laptop"), None);
    assert_eq!(alice("phone"), None, "the phone replaces the laptop");
    let st = wait_for("the laptop to count again", Duration::from_secs(10), || {
        let st = d.status();
        (st.sessions.len() == 2).then_some(st)
    });
    assert_eq!(st.in_use, 2);
    // Both count: with 5 seats, 3 more get in, not 4.
    for k in ["a", "b", "c"] {
        assert_eq!(decision(server.try_call(&server.admit(k)).unwrap()), None);
    }
    assert_eq!(
        decision(server.try_call(&server.admit("d")).unwrap()),
        Some(DenyReason::CapReached)
    );
}
