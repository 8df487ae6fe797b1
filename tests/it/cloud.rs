//! Cloud sync end to end: the real daemon against the development cloud
//! (the workspace member devcloud/, built on first use) over real mTLS on 127.0.0.1,
//! with short poll intervals; outcomes are polled with deadlines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use seatgate::admission::protocol::Request;
use seatgate::cloud::policy::{FailureKind, Severity, StampSeen};
use seatgate::license::bundle::{encode_public_key, encode_secret_key, Signed};
use seatgate::status::Status;

use super::util::{admitted, bin, call, wait_for, Cloud, Daemon, FakeServer, Gateway, DEVICE};

const POLL_MS: u64 = 150;
const SOON: Duration = Duration::from_secs(5);

/// The development cloud: its directory and, while serving, its process.
pub(super) struct DevCloud {
    pub(super) dir: tempfile::TempDir,
    server: Option<Child>,
    pub(super) addr: String,
    /// Extra arguments for `serve` (e.g. `--lease-ms`).
    pub(super) serve_args: Vec<String>,
}

/// The devcloud binary (the workspace member `devcloud/`), built once per
/// test run beside the seatgate binary under test: `cargo test` builds a
/// package's binaries only for that package's own integration tests.
pub(super) fn devcloud_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // <target-dir>/<profile>/seatgate (a triple may sit in between).
        let profile_dir = Path::new(bin())
            .parent()
            .expect("the seatgate binary has a directory");
        let target_dir = profile_dir.parent().expect("a target directory");
        let mut build = Command::new(env!("CARGO"));
        // Without what cargo set for this test binary (CARGO_PKG_*,
        // CARGO_MANIFEST_DIR, OUT_DIR...): build scripts (ring's) rerun when
        // those change, and the outer `cargo test` would then rebuild them too.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let set_for_tests = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*k);
            if set_for_tests {
                build.env_remove(&*k);
            }
        }
        build
            .args(["build", "--quiet", "-p", "devcloud", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let out = build.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo build -p devcloud failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = profile_dir.join("devcloud");
        assert!(
            path.is_file(),
            "{} is missing after the build",
            path.display()
        );
        path
    })
}

impl DevCloud {
    /// A cloud signing with the gateway's trusted key, `DEVICE` registered.
    pub(super) fn new(gw: &Gateway, ttl_secs: u64) -> DevCloud {
        let cloud = DevCloud {
            dir: tempfile::Builder::new()
                .prefix("seatgate-devcloud-")
                .tempdir()
                .unwrap(),
            server: None,
            addr: "127.0.0.1:0".into(),
            serve_args: Vec::new(),
        };
        cloud.run(&[
            "init",
            "--signing-key",
            &encode_secret_key(&gw.key),
            "--ttl-secs",
            &ttl_secs.to_string(),
        ]);
        cloud.run(&["device", "add", DEVICE, "--org", "ORG-T"]);
        cloud
    }

    pub(super) fn run(&self, args: &[&str]) {
        let out = Command::new(devcloud_bin())
            .arg("--dir")
            .arg(self.dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "devcloud {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Serves on the last address (an ephemeral port the first time).
    pub(super) fn start(&mut self) {
        let addr_file = self.dir.path().join("addr");
        let _ = std::fs::remove_file(&addr_file);
        let child = Command::new(devcloud_bin())
            .arg("--dir")
            .arg(self.dir.path())
            .args(["serve", "--addr", &self.addr])
            .args(&self.serve_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server = Some(child);
        self.addr = wait_for("the devcloud to listen", SOON, || {
            std::fs::read_to_string(&addr_file).ok()
        });
    }

    pub(super) fn stop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `[cloud]` section for a gateway reaching this cloud as `id`.
    pub(super) fn section(&self, id: &Identity, poll_ms: u64) -> Cloud {
        Cloud {
            addr: self.addr.clone(),
            ca: id.ca.clone(),
            cert: id.cert.clone(),
            key: id.key.clone(),
            poll_ms,
            max_backoff_ms: 600,
        }
    }

    fn usage(&self, serial: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.path(&format!("usage/{serial}.json"))).ok()?;
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .map(|v| v["report"].clone())
    }
}

impl Drop for DevCloud {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The files a gateway uses to reach a cloud.
pub(super) struct Identity {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Identity {
    pub(super) fn of(cloud: &DevCloud, serial: &str) -> Identity {
        Identity {
            ca: cloud.path("ca.pem"),
            cert: cloud.path(&format!("devices/{serial}.pem")),
            key: cloud.path(&format!("devices/{serial}.key")),
        }
    }
}

/// A gateway whose only license source is the cloud at `cloud.addr`.
fn cloud_gateway(cloud: &DevCloud, id: &Identity) -> Gateway {
    let gw = Gateway::new(0);
    let _ = std::fs::remove_file(gw.path("bundle.json"));
    gw.write(
        &gw.config()
            .no_bundle_file()
            .cloud(cloud.section(id, POLL_MS)),
    );
    gw
}

/// The same signing key as the gateway `cloud_gateway` will make.
fn signer() -> Gateway {
    Gateway::new(0)
}

fn cap_becomes(d: &Daemon, cap: u32, what: &str) -> Status {
    wait_for(what, SOON, || {
        let s = d.status();
        (s.cap_total == cap).then_some(s)
    })
}

fn synced(d: &Daemon) -> Status {
    wait_for("a successful sync", SOON, || {
        let s = d.status();
        s.cloud
            .as_ref()
            .is_some_and(|c| c.sync.last_success.is_some() && c.sync.last_error.is_none())
            .then_some(s)
    })
}

fn failed_with(d: &Daemon, kind: FailureKind, needle: &str) -> Status {
    wait_for(
        &format!("a {kind:?} failure saying {needle:?}"),
        SOON,
        || {
            let s = d.status();
            s.cloud
                .as_ref()
                .and_then(|c| c.sync.last_error.as_ref())
                .is_some_and(|e| e.kind == kind && e.message.contains(needle))
                .then_some(s)
        },
    )
}

fn release(d: &Daemon, key: &str) {
    call(&d.socket, &Request::Release { key: key.into() }).unwrap();
}

#[test]
fn cloud_lifecycle_add_share_move_expire_replace_reaches_the_gateway() {
    let gw0 = signer();
    let mut cloud = DevCloud::new(&gw0, 3600);
    cloud.run(&["device", "add", "ESG-PEER", "--org", "ORG-T"]);
    cloud.start();
    let gw = cloud_gateway(&cloud, &Identity::of(&cloud, DEVICE));
    let d = gw.start();
    assert_eq!(synced(&d).cap_total, 2, "no license yet: built-in seats");

    // Add License: the cap rises on the next sync.
    let t0 = Instant::now();
    cloud.run(&[
        "license", "add", "LIC-1", "--device", DEVICE, "--seats", "20",
    ]);
    cap_becomes(&d, 22, "the added license to count");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(POLL_MS * 2 + 1500),
        "took {took:?}"
    );

    // A 150-seat license of the peer shared with this gateway: a replica
    // whose slice lease gives what it wants, its headroom of 4 (no pool
    // session yet); the other 146 seats stay in the pool as its reserve.
    cloud.run(&[
        "license", "add", "LIC-BIG", "--device", "ESG-PEER", "--seats", "150",
    ]);
    cloud.run(&["license", "share", "LIC-BIG", "--with", DEVICE]);
    let s = cap_becomes(&d, 22 + 4, "the replica's slice lease to count");
    assert_eq!(s.cap.pooled, 4);
    assert_eq!(s.pools[0].limited, None, "it got what it wanted");
    assert_eq!(s.pools.len(), 1);
    assert_eq!(s.pools[0].others, vec!["ESG-PEER".to_string()]);

    let vpn = FakeServer::start(&gw.socket());
    // Below the cap (a denial would make the gateway ask for more, which
    // is the pool tests' business).
    for i in 0..20 {
        assert!(admitted(
            &vpn.try_call(&vpn.admit(&format!("s{i}"))).unwrap()
        ));
    }
    let report = wait_for("the usage report to reach the cloud", SOON, || {
        cloud.usage(DEVICE).filter(|r| r["in_use"] == 20)
    });
    // 20 of 26: no usage alert, and the report says so.
    assert_eq!(report["alert_level"], 0, "{report}");

    // Unshare, then Move License away: the cap drops under the sessions
    // held; they stay and drain, new ones are denied.
    cloud.run(&["license", "unshare", "LIC-BIG", "--from", DEVICE]);
    cap_becomes(&d, 22, "the replica to be unbound");
    cloud.run(&["license", "move", "LIC-1", "--to", "ESG-PEER"]);
    let s = cap_becomes(&d, 2, "the moved license to leave");
    assert_eq!((s.in_use, s.over_cap_by), (20, 18));
    // The gateway says which licenses went, and since which bundle.
    let dropped = s.dropped.clone().expect("dropped licenses in status");
    assert_eq!(
        dropped.ids,
        vec!["LIC-1".to_string(), "LIC-BIG".to_string()]
    );
    assert_eq!(
        Some(dropped.since_generation),
        s.bundle.as_ref().map(|b| b.generation)
    );
    let text = String::from_utf8(gw.cli(&["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "licenses no longer bound here since generation {}: LIC-1, LIC-BIG (moved, replaced or unshared)",
            dropped.since_generation
        )),
        "{text}"
    );
    assert!(!admitted(&vpn.try_call(&vpn.admit("new")).unwrap()));
    for i in 0..17 {
        release(&d, &format!("s{i}"));
    }
    assert!(
        !admitted(&vpn.try_call(&vpn.admit("new")).unwrap()),
        "3 held, cap 2"
    );
    release(&d, "s17");
    assert!(
        !admitted(&vpn.try_call(&vpn.admit("new")).unwrap()),
        "2 held, cap 2"
    );
    release(&d, "s18");
    assert!(
        admitted(&vpn.try_call(&vpn.admit("new")).unwrap()),
        "drained"
    );

    // Expiry in the cloud, then Replace Device: the old gateway's next sync
    // takes the seats away.
    cloud.run(&[
        "license", "add", "LIC-2", "--device", DEVICE, "--seats", "40",
    ]);
    cap_becomes(&d, 42, "LIC-2 to count");
    cloud.run(&["license", "expire", "LIC-2"]);
    cap_becomes(&d, 2, "the expired license to stop counting");
    cloud.run(&[
        "license", "add", "LIC-3", "--device", DEVICE, "--seats", "10",
    ]);
    cap_becomes(&d, 12, "LIC-3 to count");
    cloud.run(&["device", "replace", DEVICE, "ESG-NEW"]);
    let s = cap_becomes(&d, 2, "the replaced gateway to lose its licenses");
    let ids = s.dropped.map(|d| d.ids).unwrap_or_default();
    assert!(ids.contains(&"LIC-3".to_string()), "{ids:?}");
    assert!(cloud.path("devices/ESG-NEW.pem").is_file());
}

#[test]
fn cloud_down_keeps_the_cap_a_restart_serves_the_cache_and_sync_recovers() {
    let gw0 = signer();
    let mut cloud = DevCloud::new(&gw0, 3600);
    cloud.run(&[
        "license", "add", "LIC-1", "--device", DEVICE, "--seats", "20",
    ]);
    cloud.start();
    let gw = cloud_gateway(&cloud, &Identity::of(&cloud, DEVICE));
    let d = gw.start();
    cap_becomes(&d, 22, "the first sync");

    cloud.stop();
    let s = failed_with(&d, FailureKind::Transient, "cannot reach the cloud");
    assert_eq!(s.cap_total, 22, "an unreachable cloud changes nothing");
    let alarm = s.cloud.unwrap().alarm.unwrap();
    assert_eq!(alarm.severity, Severity::Warning);
    assert!(
        alarm.message.contains("licensed seats hold until"),
        "{alarm:?}"
    );

    // Restart with the cloud still down: the stored bundle is loaded before
    // the network is tried.
    d.signal(Signal::SIGTERM);
    let (status, _) = d.wait_exit(SOON);
    assert!(status.success());
    let d = gw.start();
    assert_eq!(d.status().cap_total, 22, "cached cap right after start");
    failed_with(&d, FailureKind::Transient, "cannot reach the cloud");
    let text = String::from_utf8(gw.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("LAST ATTEMPT FAILED (transient"), "{text}");
    assert!(text.contains("** WARNING: no sync since"), "{text}");
    // No sync since the restart does not hide the bundle in force: its age
    // shows, and the timeline's last step is the bundle ending, not a
    // license expiring.
    assert!(
        text.contains("last sync: none since start; bundle in force issued "),
        "{text}"
    );
    assert!(text.contains("ago), valid until "), "{text}");
    assert!(text.contains(", then 2 (bundle ends)"), "{text}");
    let s = d.status();
    assert!(
        s.timeline.last().is_some_and(|t| t.bundle_ends),
        "{:?}",
        s.timeline
    );
    let b = s.bundle.expect("bundle in force");
    assert_eq!(b.age_secs, (s.now - b.issued_at).num_seconds().max(0));

    // A license added while the gateway could not see the cloud arrives
    // when the cloud is back (backoff capped at 600 ms).
    cloud.run(&[
        "license", "add", "LIC-2", "--device", DEVICE, "--seats", "10",
    ]);
    cloud.start();
    cap_becomes(&d, 32, "the recovered sync");
    let s = synced(&d);
    assert!(s.cloud.unwrap().alarm.is_none());
}

#[test]
fn tampered_foreign_and_replayed_bundles_are_rejected_and_the_cap_holds() {
    let gw0 = signer();
    let mut cloud = DevCloud::new(&gw0, 3600);
    cloud.run(&[
        "license", "add", "LIC-1", "--device", DEVICE, "--seats", "20",
    ]);
    cloud.start();
    let gw = cloud_gateway(&cloud, &Identity::of(&cloud, DEVICE));
    let d = gw.start();
    cap_becomes(&d, 22, "the first sync");
    let stored = || {
        let text = std::fs::read_to_string(gw.path("state/bundle.json")).unwrap();
        let signed = Signed::parse(&text).unwrap();
        signed.verify(&[gw.key.verifying_key()]).unwrap().generation
    };
    let generation = wait_for("the bundle to be stored", SOON, || {
        std::fs::read_to_string(gw.path("state/bundle.json"))
            .is_ok()
            .then(stored)
    });

    let faults = [
        ("tamper", "signature does not verify"),
        ("foreign", "for device ESG-FOREIGN, not this gateway"),
        ("older", "older than the accepted generation"),
    ];
    for (fault, why) in faults {
        cloud.run(&["fault", DEVICE, fault]);
        let s = failed_with(&d, FailureKind::Rejected, why);
        assert_eq!(s.cap_total, 22, "{fault}: the cap must not move");
        assert_eq!(s.bundle.unwrap().generation, generation, "{fault}");
        assert_eq!(stored(), generation, "{fault}: the stored bundle stays");
    }
    cloud.run(&["fault", DEVICE, "none"]);
    synced(&d);
    assert_eq!(d.status().cap_total, 22);
}

#[test]
fn wrong_server_ca_or_unknown_client_certificate_means_no_sync_and_a_clear_status() {
    let gw0 = signer();
    let mut cloud = DevCloud::new(&gw0, 3600);
    cloud.run(&["device", "add", "ESG-PEER", "--org", "ORG-T"]);
    cloud.run(&[
        "license", "add", "LIC-1", "--device", DEVICE, "--seats", "20",
    ]);
    cloud.start();
    // Another cloud: its CA and a device certificate it issued.
    let other = DevCloud::new(&gw0, 3600);
    let good = Identity::of(&cloud, DEVICE);
    let foreign = Identity::of(&other, DEVICE);

    let cases = [
        (
            "server certificate from another CA",
            Identity {
                ca: foreign.ca.clone(),
                ..Identity::of(&cloud, DEVICE)
            },
            FailureKind::UntrustedServer,
            "does not verify against [cloud] ca_file",
            "untrusted server",
        ),
        (
            "client certificate the cloud did not issue",
            Identity {
                ca: good.ca.clone(),
                ..Identity::of(&other, DEVICE)
            },
            FailureKind::Unauthorized,
            "client certificate was not accepted",
            "unauthorized",
        ),
        (
            "client certificate of another device",
            Identity::of(&cloud, "ESG-PEER"),
            FailureKind::Unauthorized,
            "HTTP 403: the certificate is for ESG-PEER",
            "unauthorized",
        ),
    ];
    let daemons: Vec<_> = cases
        .into_iter()
        .map(|(name, id, kind, why, label)| {
            let gw = cloud_gateway(&cloud, &id);
            let d = gw.start();
            (name, gw, d, kind, why, label)
        })
        .collect();
    for (name, gw, d, kind, why, label) in &daemons {
        let s = failed_with(d, *kind, why);
        assert_eq!(s.cap_total, 2, "{name}: nothing synced");
        let c = s.cloud.unwrap();
        assert!(c.sync.last_success.is_none(), "{name}");
        assert_eq!(c.alarm.unwrap().severity, Severity::Error, "{name}");
        let text = String::from_utf8(gw.cli(&["status"]).stdout).unwrap();
        assert!(
            text.contains(&format!("LAST ATTEMPT FAILED ({label}")),
            "{name}: {text}"
        );
    }
}

#[test]
fn bundle_past_not_after_without_the_cloud_gives_builtin_seats_then_recovers() {
    let gw0 = signer();
    let mut cloud = DevCloud::new(&gw0, 3);
    cloud.run(&[
        "license", "add", "LIC-1", "--device", DEVICE, "--seats", "20",
    ]);
    cloud.start();
    let gw = cloud_gateway(&cloud, &Identity::of(&cloud, DEVICE));
    let d = gw.start();
    cap_becomes(&d, 22, "the first sync");

    cloud.stop();
    let s = cap_becomes(&d, 2, "the bundle to run out");
    assert!(s.bundle.unwrap().ran_out);
    let s = wait_for("the ran-out alarm", SOON, || {
        let s = d.status();
        s.cloud
            .as_ref()
            .and_then(|c| c.alarm.as_ref())
            .is_some_and(|a| a.severity == Severity::Error)
            .then_some(s)
    });
    assert!(s.cloud.unwrap().alarm.unwrap().message.contains("RAN OUT"));
    let text = String::from_utf8(gw.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("** ERROR: the bundle RAN OUT"), "{text}");

    cloud.start();
    cap_becomes(&d, 22, "a fresh bundle after the cloud is back");
    assert!(synced(&d).cloud.unwrap().alarm.is_none());
}

#[test]
fn sighup_picks_up_a_corrected_cloud_section_and_syncs_at_once() {
    let gw0 = signer();
    let mut cloud = DevCloud::new(&gw0, 3600);
    cloud.run(&[
        "license", "add", "LIC-1", "--device", DEVICE, "--seats", "20",
    ]);
    cloud.start();
    let other = DevCloud::new(&gw0, 3600);
    let wrong = Identity {
        ca: other.path("ca.pem"),
        ..Identity::of(&cloud, DEVICE)
    };
    let gw = cloud_gateway(&cloud, &wrong);
    let d = gw.start();
    failed_with(&d, FailureKind::UntrustedServer, "ca_file");
    // Fix the config in place; the slow retry (600 ms) is not what fixes it.
    let mut fixed = cloud.section(&Identity::of(&cloud, DEVICE), POLL_MS);
    fixed.max_backoff_ms = 60_000;
    gw.write(&gw.config().no_bundle_file().cloud(fixed));
    d.signal(Signal::SIGHUP);
    cap_becomes(&d, 22, "the sync after SIGHUP");
    synced(&d);
}

/// A gateway that synced LIC-1 (20 seats) from `cloud`, then had a mistaken
/// forward jump of its clock persisted: its daemon is stopped, `clock.json`
/// holds a mark ten years ahead, and the cloud is stopped too.
fn gateway_with_a_clock_ten_years_ahead(cloud: &mut DevCloud) -> Gateway {
    cloud.run(&[
        "license", "add", "LIC-1", "--device", DEVICE, "--seats", "20",
    ]);
    cloud.start();
    let gw = cloud_gateway(cloud, &Identity::of(cloud, DEVICE));
    let d = gw.start();
    cap_becomes(&d, 22, "the first sync");
    wait_for("the bundle to be stored", SOON, || {
        gw.path("state/bundle.json").is_file().then_some(())
    });
    d.signal(Signal::SIGTERM);
    let (status, log) = d.wait_exit(SOON);
    assert!(status.success(), "{log}");
    cloud.stop();
    let ahead = chrono::Utc::now() + chrono::Duration::days(3653);
    let mark = serde_json::json!({ "high_water": ahead });
    std::fs::write(gw.path("state/clock.json"), mark.to_string()).unwrap();
    gw
}

fn stamp_seen(d: &Daemon, what: &str, f: impl Fn(&StampSeen) -> bool) -> Status {
    wait_for(what, SOON, || {
        let s = d.status();
        s.cloud
            .as_ref()
            .and_then(|c| c.sync.stamp.as_ref())
            .is_some_and(&f)
            .then_some(s)
    })
}

#[test]
fn a_forward_jump_persisted_in_clock_json_heals_at_the_first_stamped_sync() {
    let gw0 = signer();
    let mut cloud = DevCloud::new(&gw0, 3600);
    let gw = gateway_with_a_clock_ten_years_ahead(&mut cloud);

    // No pools: only the bundle answer can bring a fresh signed time.
    let d = gw.start();
    let s = d.status();
    assert!(
        s.now > chrono::Utc::now() + chrono::Duration::days(3600),
        "the clock starts from the mark: {}",
        s.now
    );
    assert!(s.bundle.is_some(), "the stored bundle is loaded");
    assert_eq!(s.cap_total, 2, "at the wrong clock LIC-1 looks expired");
    assert!(s.pools.is_empty());

    cloud.start();
    let s = cap_becomes(&d, 22, "the cloud's time stamp to heal the clock");
    let off = (s.now - chrono::Utc::now()).abs();
    assert!(
        off < chrono::Duration::minutes(1),
        "now {} is off by {off}",
        s.now
    );
    let s = stamp_seen(&d, "a verified stamp in status", |st| {
        matches!(st, StampSeen::Verified { .. })
    });
    assert!(s.cloud.unwrap().sync.last_error.is_none());
    // The healed clock is written at once, so a restart keeps it.
    wait_for("the healed mark in clock.json", SOON, || {
        let text = std::fs::read_to_string(gw.path("state/clock.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let high: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(v["high_water"].clone()).ok()?;
        (high < chrono::Utc::now() + chrono::Duration::days(1)).then_some(())
    });
    d.signal(Signal::SIGTERM);
    let (status, log) = d.wait_exit(SOON);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("the license clock was corrected by a signed time from the cloud"),
        "{log}"
    );
}

#[test]
fn missing_forged_or_replayed_stamps_change_nothing_and_say_so() {
    let gw0 = signer();
    let mut cloud = DevCloud::new(&gw0, 3600);
    let gw = gateway_with_a_clock_ten_years_ahead(&mut cloud);
    cloud.run(&["fault", DEVICE, "bad-stamp"]);
    cloud.start();
    let d = gw.start();

    let cases = [
        ("bad-stamp", "signature does not verify"),
        ("replayed-stamp", "its nonce is not the one sent"),
    ];
    for (fault, why) in cases {
        cloud.run(&["fault", DEVICE, fault]);
        let s = stamp_seen(
            &d,
            &format!("{fault} refused"),
            |st| matches!(st, StampSeen::Refused { reason } if reason.contains(why)),
        );
        assert_eq!(s.cap_total, 2, "{fault}: the clock did not move");
        assert!(
            s.cloud.unwrap().sync.last_error.is_none(),
            "{fault}: synced"
        );
        let text = String::from_utf8(gw.cli(&["status"]).stdout).unwrap();
        assert!(text.contains("signed time REFUSED (ignored)"), "{text}");
    }
    // An older cloud that does not stamp: syncs as before, heals nothing.
    cloud.run(&["fault", DEVICE, "no-stamp"]);
    let s = stamp_seen(&d, "no stamp", |st| *st == StampSeen::Missing);
    assert_eq!(s.cap_total, 2);
    let text = String::from_utf8(gw.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("signed time: none"), "{text}");

    cloud.run(&["fault", DEVICE, "none"]);
    cap_becomes(&d, 22, "a good stamp to heal the clock");
    d.signal(Signal::SIGTERM);
    let (status, log) = d.wait_exit(SOON);
    assert!(status.success(), "{log}");
    let refusals = log
        .matches("signed time stamp from the cloud refused")
        .count();
    assert_eq!(refusals, 2, "one warning per change, not per sync: {log}");
}

#[test]
fn check_config_says_whose_certificate_it_is_and_whether_the_key_matches() {
    let gw0 = signer();
    let cloud = DevCloud::new(&gw0, 3600);
    cloud.run(&["device", "add", "ESG-B2", "--org", "ORG-T"]);
    let mine = Identity::of(&cloud, DEVICE);
    let other = Identity::of(&cloud, "ESG-B2");
    let cases = [
        (
            "another device's certificate and key",
            Identity {
                ca: mine.ca.clone(),
                ..Identity::of(&cloud, "ESG-B2")
            },
            format!("cloud.client_cert: certificate is for ESG-B2, this gateway is {DEVICE}"),
        ),
        (
            "this device's certificate, another key",
            Identity {
                ca: mine.ca.clone(),
                cert: mine.cert.clone(),
                key: other.key.clone(),
            },
            "cloud.client_key: does not match cloud.client_cert".to_string(),
        ),
    ];
    for (name, id, want) in cases {
        let gw = cloud_gateway(&cloud, &id);
        let out = gw.cli(&["check-config"]);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{name}: {err}");
        assert!(err.contains(&want), "{name}: {err}");
        assert!(err.contains("has 1 problem(s)"), "{name}: {err}");
    }
    let gw = cloud_gateway(&cloud, &mine);
    let out = gw.cli(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn init_prints_a_cloud_section_that_works_pasted_into_the_gateway_config() {
    let gw = Gateway::new(0);
    let _ = std::fs::remove_file(gw.path("bundle.json"));
    // The address serve will listen on, known before init prints the URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cloud = DevCloud {
        dir: tempfile::Builder::new()
            .prefix("seatgate-devcloud-")
            .tempdir()
            .unwrap(),
        server: None,
        addr: format!("127.0.0.1:{port}"),
        serve_args: Vec::new(),
    };
    let out = Command::new(devcloud_bin())
        .arg("--dir")
        .arg(cloud.dir.path())
        .args(["init", "--signing-key", &encode_secret_key(&gw.key)])
        .args(["--device", DEVICE, "--org", "ORG-T", "--config-dir"])
        .arg(gw.dir.path())
        .args(["--url", &format!("https://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains(&format!(
            "trusted_keys = [\"{}\"]",
            encode_public_key(&gw.key.verifying_key())
        )),
        "{printed}"
    );
    let section = &printed[printed.find("[cloud]").expect("a [cloud] section")..];
    for key in ["url", "ca_file", "client_cert", "client_key"] {
        let line = section
            .lines()
            .find(|l| l.starts_with(&format!("{key} = \"")))
            .unwrap_or_else(|| panic!("{key} in {section}"));
        assert!(!line.contains("= \"/"), "relative paths: {line}");
    }
    // Pasted as printed (the gateway's own config has its device and key).
    std::fs::write(
        gw.config_path(),
        format!("{}{section}", gw.config().no_bundle_file().build()),
    )
    .unwrap();
    let out = gw.cli(&["check-config"]);
    assert!(
        out.status.success(),
        "{section}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout).unwrap().contains(": ok"));
    cloud.run(&[
        "license", "add", "LIC-1", "--device", DEVICE, "--seats", "20",
    ]);
    cloud.start();
    let d = gw.start();
    cap_becomes(&d, 22, "the pasted section to sync");
}
