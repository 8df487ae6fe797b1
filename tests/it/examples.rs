//! The example configs in config/examples/ (and the shipped config/seatgate.toml
//! and config/demo.toml) parse with no problems, and the values seatgate reads
//! are the values the files say. A new `*.toml` in config/examples/ is picked
//! up without touching this file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use seatgate::config::{self, Config, Source};
use seatgate::license::bundle::Bundle;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.toml` directly in `dir`, sorted.
fn tomls_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn examples() -> Vec<PathBuf> {
    tomls_in(&root().join("config/examples"))
}

/// The examples plus the shipped reference and demo configs.
fn all_configs() -> Vec<PathBuf> {
    let mut files = examples();
    files.push(root().join("config/seatgate.toml"));
    files.push(root().join("config/demo.toml"));
    files
}

/// Parses a config file the way `load` does (relative paths follow the file),
/// failing with every problem listed.
fn parse_file(path: &Path) -> Config {
    let text = std::fs::read_to_string(path).unwrap();
    config::parse(&text, path.parent().unwrap()).unwrap_or_else(|problems| {
        panic!(
            "{} has {} problem(s):\n{}",
            path.display(),
            problems.len(),
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn example(name: &str) -> Config {
    parse_file(&root().join("config/examples").join(name))
}

fn ms(v: &toml::Value) -> Duration {
    Duration::from_millis(v.as_integer().unwrap() as u64)
}

fn strings(v: &toml::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Compares what seatgate read with the file's own TOML values, key by key,
/// for the keys the file sets.
fn check_values_match_the_file(path: &Path, c: &Config) {
    let name = path.display();
    let text = std::fs::read_to_string(path).unwrap();
    let raw: toml::Table = toml::from_str(&text).unwrap();
    let resolve = |v: &toml::Value| {
        let p = Path::new(v.as_str().unwrap());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            path.parent().unwrap().join(p)
        }
    };
    assert_eq!(c.device, raw["device"].as_str().unwrap(), "{name}: device");
    if let Some(v) = raw.get("builtin_seats") {
        assert_eq!(c.builtin_seats as i64, v.as_integer().unwrap(), "{name}");
    }
    if let Some(license) = raw.get("license") {
        if let Some(keys) = license.get("trusted_keys") {
            assert_eq!(c.trusted_keys.len(), strings(keys).len(), "{name}");
        }
        assert_eq!(
            c.bundle_file,
            license.get("bundle_file").map(resolve),
            "{name}: license.bundle_file"
        );
    }
    if let Some(paths) = raw.get("paths") {
        for (key, got) in [
            ("socket", &c.socket),
            ("runtime_dir", &c.runtime_dir),
            ("state_dir", &c.state_dir),
        ] {
            if let Some(v) = paths.get(key) {
                assert_eq!(got, &resolve(v), "{name}: paths.{key}");
            }
        }
    }
    if let Some(a) = raw.get("admission") {
        let ours = &c.admission;
        if let Some(v) = a.get("vpn_users") {
            assert_eq!(ours.vpn_users, strings(v), "{name}: vpn_users");
        }
        if let Some(v) = a.get("vpn_groups") {
            assert_eq!(ours.vpn_groups, strings(v), "{name}: vpn_groups");
        }
        if let Some(v) = a.get("operator_groups") {
            assert_eq!(ours.operator_groups, strings(v), "{name}");
        }
        if let Some(v) = a.get("socket_group") {
            assert_eq!(ours.socket_group.as_deref(), v.as_str(), "{name}");
        }
        if let Some(v) = a.get("socket_mode") {
            let mode = u32::from_str_radix(v.as_str().unwrap(), 8).unwrap();
            assert_eq!(ours.socket_mode, mode, "{name}: socket_mode");
        }
        if let Some(v) = a.get("status_public") {
            assert_eq!(Some(ours.status_public), v.as_bool(), "{name}");
        }
        if let Some(v) = a.get("server_check_ms") {
            assert_eq!(ours.server_check, ms(v), "{name}: server_check_ms");
        }
    }
    let entries = raw
        .get("reconcile")
        .map(|r| r.as_array().unwrap().clone())
        .unwrap_or_default();
    assert_eq!(c.reconcile.len(), entries.len(), "{name}: [[reconcile]]");
    for (i, (r, ours)) in entries.iter().zip(&c.reconcile).enumerate() {
        let what = format!("{name}: reconcile[{i}]");
        match (r["kind"].as_str().unwrap(), &ours.source) {
            ("openvpn", Source::Openvpn { management }) => {
                assert_eq!(management, &resolve(&r["management"]), "{what}");
            }
            ("ocserv", Source::Ocserv { occtl, socket }) => {
                if let Some(v) = r.get("occtl") {
                    assert_eq!(occtl, &resolve(v), "{what}");
                }
                assert_eq!(socket, &r.get("occtl_socket").map(resolve), "{what}");
            }
            (kind, source) => panic!("{what}: kind {kind} read as {source:?}"),
        }
        for (key, got) in [
            ("interval_ms", ours.interval),
            ("timeout_ms", ours.timeout),
            ("grace_ms", ours.grace),
        ] {
            if let Some(v) = r.get(key) {
                assert_eq!(got, ms(v), "{what}.{key}");
            }
        }
    }
    let policy = raw.get("policy");
    let limit = policy.and_then(|p| p.get("max_sessions_per_user"));
    assert_eq!(
        c.policy.max_sessions_per_user.map(i64::from),
        limit.map(|v| v.as_integer().unwrap()),
        "{name}: policy.max_sessions_per_user"
    );
    if let Some(v) = policy.and_then(|p| p.get("at_user_limit")) {
        let ours = c.policy.at_user_limit.as_str();
        assert_eq!(Some(ours), v.as_str(), "{name}: policy.at_user_limit");
    }
    let groups = policy
        .and_then(|p| p.get("group"))
        .map(|g| g.as_array().unwrap().clone())
        .unwrap_or_default();
    assert_eq!(
        c.policy.groups.len(),
        groups.len(),
        "{name}: [[policy.group]]"
    );
    for (g, ours) in groups.iter().zip(&c.policy.groups) {
        let what = format!("{name}: policy.group {}", ours.name);
        assert_eq!(ours.name, g["name"].as_str().unwrap(), "{what}");
        let list = |k: &str| g.get(k).map(strings).unwrap_or_default();
        assert_eq!(
            (&ours.users, &ours.groups),
            (&list("users"), &list("groups")),
            "{what}"
        );
        let n = |k: &str| g.get(k).map(|v| v.as_integer().unwrap() as u32);
        assert_eq!(
            (ours.reserved, ours.max),
            (n("reserved").unwrap_or(0), n("max")),
            "{what}"
        );
    }
    match (raw.get("cloud"), &c.cloud) {
        (None, None) => {}
        (Some(raw), Some(cloud)) => {
            assert_eq!(cloud.url.as_str(), raw["url"].as_str().unwrap(), "{name}");
            assert_eq!(cloud.ca_file, resolve(&raw["ca_file"]), "{name}");
            assert_eq!(cloud.client_cert, resolve(&raw["client_cert"]), "{name}");
            assert_eq!(cloud.client_key, resolve(&raw["client_key"]), "{name}");
            for (key, got) in [
                ("poll_interval_ms", cloud.poll_interval),
                ("max_backoff_ms", cloud.max_backoff),
                ("request_timeout_ms", cloud.request_timeout),
            ] {
                if let Some(v) = raw.get(key) {
                    assert_eq!(got, ms(v), "{name}: cloud.{key}");
                }
            }
        }
        (raw, ours) => panic!("{name}: [cloud] in the file {raw:?}, read as {ours:?}"),
    }
}

#[test]
fn every_example_and_shipped_config_parses_to_what_the_file_says() {
    for path in all_configs() {
        let c = parse_file(&path);
        check_values_match_the_file(&path, &c);
    }
}

#[test]
fn a_new_example_file_is_picked_up_without_editing_the_tests() {
    let names: Vec<String> = examples()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    for want in [
        "openvpn-gateway.toml",
        "ocserv-gateway.toml",
        "cloud-gateway.toml",
        "airgapped-static-pool.toml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    // The same listing sees a file added later, and only *.toml files.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), "device = \"A\"").unwrap();
    std::fs::write(dir.path().join("a.bundle.json"), "{}").unwrap();
    assert_eq!(tomls_in(dir.path()).len(), 1);
    std::fs::write(dir.path().join("new-gateway.toml"), "device = \"B\"").unwrap();
    assert_eq!(
        tomls_in(dir.path()),
        [
            dir.path().join("a.toml"),
            dir.path().join("new-gateway.toml")
        ]
    );
}

/// The worked example of docs/policy.md and config/examples/seat-policy.toml,
/// decided by the admission core with the example's own policy.
#[test]
fn seat_policy_example_does_what_its_comments_say() {
    use seatgate::admission::protocol::{AdmitRequest, DenyReason, ServerKind, ServerRef};
    use seatgate::admission::table::{Decision, ServerId, Table};
    let c = example("seat-policy.toml");
    let p = &c.policy;
    let mut t = Table::default();
    let server = ServerId {
        kind: ServerKind::Ocserv,
        pid: 1,
        start_ticks: 1,
        ns_pid: 1,
    };
    let now = chrono::Utc::now();
    let mut n = 0;
    let mut admit = |t: &mut Table, user: &str, group: &str| {
        n += 1;
        let req = AdmitRequest {
            key: format!("k{n}"),
            user: user.into(),
            server: ServerRef {
                kind: ServerKind::Ocserv,
                pid: 1,
            },
            remote: String::new(),
            group: group.into(),
        };
        let (d, _, replaced) = t.admit(&req, server, 32, p, now + chrono::Duration::seconds(n));
        (d, replaced.map(|s| s.key))
    };
    let yes = (Decision::Admitted { again: false }, None);
    let no = |r| (Decision::Denied(r), None);
    for i in 0..5 {
        assert_eq!(admit(&mut t, &format!("ext{i}"), "contractors"), yes);
    }
    assert_eq!(
        admit(&mut t, "ext5", "contractors"),
        no(DenyReason::GroupLimit)
    );
    for i in 5..30 {
        assert_eq!(admit(&mut t, &format!("u{i}"), ""), yes);
    }
    assert_eq!(t.in_use(), 30);
    assert_eq!(admit(&mut t, "carol", ""), no(DenyReason::Reserved));
    assert_eq!(admit(&mut t, "alice", ""), yes);
    assert_eq!(admit(&mut t, "bob", ""), yes);
    assert_eq!(t.in_use(), 32);
    // A second device of u5 at a full gateway: refused for want of seats.
    assert_eq!(admit(&mut t, "u5", ""), no(DenyReason::CapReached));
    // u6 leaves; alice's second device gets in, her third takes the seat
    // of her oldest session (k33).
    t.release("k8");
    assert_eq!(admit(&mut t, "alice", ""), yes);
    assert_eq!(
        admit(&mut t, "alice", ""),
        (Decision::Admitted { again: false }, Some("k33".into()))
    );
    assert_eq!(t.in_use(), 32);
}

#[test]
fn openvpn_example_reconciles_through_the_management_socket() {
    let c = example("openvpn-gateway.toml");
    assert_eq!(c.reconcile.len(), 1);
    assert_eq!(
        c.reconcile[0].source,
        Source::Openvpn {
            management: "/run/openvpn/server.sock".into()
        }
    );
    assert_eq!(c.admission.vpn_users, ["nobody"]);
    assert_eq!(c.admission.socket_group.as_deref(), Some("nogroup"));
    assert_eq!(c.admission.socket_mode, 0o660);
    assert!(c.cloud.is_some());
    assert_eq!(c.alerts.thresholds, [75, 90, 100]);
    assert_eq!(c.alerts.hysteresis, 5);
}

#[test]
fn ocserv_example_reconciles_through_occtl() {
    let c = example("ocserv-gateway.toml");
    assert_eq!(c.reconcile.len(), 1);
    assert_eq!(
        c.reconcile[0].source,
        Source::Ocserv {
            occtl: "/usr/bin/occtl".into(),
            socket: Some("/var/run/occtl.socket".into()),
        }
    );
    assert_eq!(c.admission.vpn_users, ["root"]);
    assert_eq!(c.admission.server_check, Duration::from_millis(500));
}

#[test]
fn cloud_example_sets_every_cloud_key() {
    let c = example("cloud-gateway.toml");
    let cloud = c.cloud.expect("[cloud]");
    assert_eq!(cloud.url.as_str(), "https://cloud.example/api/");
    assert_eq!(cloud.poll_interval, Duration::from_secs(15 * 60));
    assert_eq!(cloud.max_backoff, Duration::from_secs(60 * 60));
    assert_eq!(cloud.request_timeout, Duration::from_secs(20));
    assert_eq!(c.trusted_keys.len(), 2);
    assert!(c.bundle_file.is_none());
    assert!(c.reconcile.is_empty());
}

#[test]
fn airgapped_example_reads_a_bundle_file_with_a_static_pool_share() {
    let c = example("airgapped-static-pool.toml");
    assert!(c.cloud.is_none(), "air-gapped: no [cloud]");
    assert_eq!(
        c.bundle_file.as_deref(),
        Some(Path::new("/etc/seatgate/bundle.json"))
    );
    // The bundle the example describes (unsigned, next to it): every record
    // counts on this gateway and the pool is static.
    let path = root().join("config/examples/airgapped-static-pool.bundle.json");
    let bundle: Bundle = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(bundle.device, c.device);
    let (ent, rejected) = bundle.entitlement(c.builtin_seats);
    assert!(rejected.is_empty(), "{rejected:?}");
    let pools: Vec<_> = ent
        .licenses
        .iter()
        .filter_map(|l| l.pool.as_ref())
        .collect();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].static_share(), Some(50));
    assert!(pools[0].members.contains(&c.device));
    let cap = ent.cap_at("2026-12-01T00:00:00Z".parse().unwrap());
    assert_eq!(
        (cap.builtin, cap.licensed, cap.pooled, cap.total()),
        (2, 10, 50, 62),
        "the cap the example's comment states"
    );
    assert!(ent
        .leased_pools("2026-12-01T00:00:00Z".parse().unwrap())
        .is_empty());
}

#[test]
fn minimal_example_is_all_defaults() {
    let c = example("minimal.toml");
    assert_eq!(c.builtin_seats, 2);
    assert_eq!(c.socket, PathBuf::from(config::DEFAULT_SOCKET));
    assert_eq!(c.state_dir, PathBuf::from(config::DEFAULT_STATE_DIR));
    assert!(c.trusted_keys.is_empty() && c.bundle_file.is_none());
    assert!(c.cloud.is_none() && c.reconcile.is_empty());
}

#[test]
fn shipped_configs_read_as_documented() {
    let demo = parse_file(&root().join("config/demo.toml"));
    assert_eq!(demo.device, "ESG-DEMO");
    assert_eq!(
        demo.bundle_file,
        Some(root().join("config/demo/bundle.json"))
    );
    assert!(demo.bundle_file.unwrap().is_file());
    let reference = parse_file(&root().join("config/seatgate.toml"));
    assert_eq!(reference.device, "ESG-A1B2C3");
    // Its [cloud] and [[reconcile]] blocks are commented out: the example
    // files above are the tested versions of them.
    assert!(reference.cloud.is_none() && reference.reconcile.is_empty());
}
