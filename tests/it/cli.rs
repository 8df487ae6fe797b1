//! The operator commands on real files: licenses, check-config, bundle.

use std::process::Command;

use super::util::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn licenses_on_the_shipped_demo_prints_cap_and_timeline() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
    let out = Command::new(bin())
        .args(["licenses", "--config", demo, "--at", "2026-12-01T00:00:00Z"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("cap now: 32 seats (2 built-in + 30 licensed + 0 pooled)"),
        "{text}"
    );
    assert!(
        text.contains(
            "timeline: 32 until 2027-06-10 00:00 UTC, then 12 until 2029-06-09 00:00 UTC, then 2"
        ),
        "{text}"
    );
    let out = Command::new(bin())
        .args([
            "licenses",
            "--json",
            "--config",
            demo,
            "--at",
            "2028-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cap"]["total"], 12);
    assert_eq!(v["licenses"][0]["status"], "expired");
    assert_eq!(v["licenses"][2]["product"], "pro");
    assert_eq!(v["licenses"][2]["seats_now"], 0);
}

#[test]
fn every_shipped_config_passes_check_config() {
    for name in ["config/demo.toml", "config/seatgate.toml"] {
        let path = format!("{}/{name}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(bin())
            .args(["check-config", "--config", &path])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
}

#[test]
fn check_config_lists_every_problem_and_fails() {
    let gw = Gateway::new(0);
    std::fs::write(gw.config_path(), "device = \"ESG 1\"\n[license]\ntrusted_keys = [\"nope\"]\n[admission]\nvpn_users = [\"no-such-user-xyz\"]\n").unwrap();
    let out = gw.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("device: \"ESG 1\" is not a gateway serial"),
        "{err}"
    );
    assert!(err.contains("license.trusted_keys[0]"), "{err}");
    std::fs::write(
        gw.config_path(),
        "device = \"ESG-1\"\n[admission]\nvpn_users = [\"no-such-user-xyz\"]\n",
    )
    .unwrap();
    let err = stderr(&gw.cli(&["check-config"]));
    assert!(
        err.contains("admission.vpn_users[0]: no user \"no-such-user-xyz\""),
        "{err}"
    );
}

#[test]
fn bundle_keygen_sign_verify_round_trip_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let out = Command::new(bin())
        .args(["bundle", "keygen", &p("k")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(p("k.key")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = Command::new(bin())
        .args(["bundle", "keygen", &p("k")])
        .output()
        .unwrap();
    assert!(!again.status.success() && stderr(&again).contains("refusing to overwrite"));

    std::fs::write(
        p("b.json"),
        serde_json::to_string(&bundle(3, vec![spc("L1", 20)])).unwrap(),
    )
    .unwrap();
    let out = Command::new(bin())
        .args([
            "bundle",
            "sign",
            "--key",
            &p("k.key"),
            &p("b.json"),
            "-o",
            &p("s.json"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(bin())
        .args([
            "bundle",
            "verify",
            "--public-key",
            &p("k.pub"),
            &p("s.json"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("signature ok; device ESG-TEST"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("cap now 22"), "{}", stdout(&out));

    // Flip the payload for one with more seats, keep the signature.
    let mut signed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("s.json")).unwrap()).unwrap();
    let forged = seatgate::license::bundle::sign(
        &bundle(3, vec![spc("L1", 2000)]),
        &ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    );
    signed["payload"] = forged.payload.into();
    std::fs::write(p("t.json"), signed.to_string()).unwrap();
    let out = Command::new(bin())
        .args([
            "bundle",
            "verify",
            "--public-key",
            &p("k.pub"),
            &p("t.json"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("signature does not verify"),
        "{}",
        stderr(&out)
    );
}

/// Runs seatgate with stdout a pipe whose reader is already gone: every
/// write meets EPIPE, as under `| head -1` once head has its line.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(bin())
        .args(args)
        .env_remove("SEATGATE_SOCKET")
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    out
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
    for args in [
        &["licenses", "--json", "--config", demo][..],
        &["licenses", "--config", demo],
        &["check-config", "--config", demo],
    ] {
        let out = with_closed_stdout(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
    let gw = Gateway::new(3);
    let d = gw.start();
    let config = gw.config_path();
    let config = config.to_str().unwrap();
    for args in [
        &["status", "--config", config][..],
        &["status", "--json", "--config", config],
    ] {
        let out = with_closed_stdout(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
    drop(d);
}

#[test]
fn licenses_at_takes_a_date() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
    let out = Command::new(bin())
        .args(["licenses", "--config", demo, "--at", "2027-07-01"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("at 2027-07-01 00:00:00 UTC"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("cap now: 12 seats"),
        "{}",
        stdout(&out)
    );
    let out = Command::new(bin())
        .args(["licenses", "--config", demo, "--at", "July"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a date (2027-07-01"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_config_judges_the_bundle_file_as_the_daemon_would() {
    let gw = Gateway::new(3);
    let ok = gw.cli(&["check-config"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("bundle file generation 1 signature ok, cap now 5"),
        "{}",
        stdout(&ok)
    );
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let other_device = seatgate::license::bundle::Bundle {
        device: "ESG-OTHER".into(),
        ..bundle(2, vec![spc("L1", 20)])
    };
    let cases = [
        (
            seatgate::license::bundle::sign(&other_device, &gw.key).to_json(),
            "bundle is for device ESG-OTHER, not this gateway (ESG-TEST)",
        ),
        (
            seatgate::license::bundle::sign(&bundle(2, vec![spc("L1", 20)]), &other_key).to_json(),
            "signature does not verify against any trusted key",
        ),
        ("not json at all".to_string(), "not a signed bundle"),
    ];
    for (text, want) in cases {
        std::fs::write(gw.path("bundle.json"), text).unwrap();
        let out = gw.cli(&["check-config"]);
        assert_eq!(out.status.code(), Some(1), "{want}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("license.bundle_file: "),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(want), "{want}: {}", stderr(&out));
    }
}

#[test]
fn check_config_names_every_wrong_key_in_plain_words() {
    let gw = Gateway::new(0);
    std::fs::write(
        gw.config_path(),
        "device = \"ESG-1\"\nbuiltin_seats = \"2\"\n[admission]\nmax_connections = \"many\"\nstatus_public = 1\ntypo = 3\n",
    )
    .unwrap();
    let out = gw.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for want in [
        "has 4 problem(s)",
        "builtin_seats (line 2): expected a whole number, got a string (\"2\")",
        "admission.max_connections (line 4): expected a whole number, got a string (\"many\")",
        "admission.status_public (line 5): expected true or false, got a whole number (1)",
        "admission.typo (line 6): unknown key \"typo\"",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    assert!(!err.contains("u32") && !err.contains("usize"), "{err}");
}

#[test]
fn key_files_say_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let out = Command::new(bin())
        .args(["bundle", "keygen", &p("signer")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let secret = std::fs::read_to_string(p("signer.key")).unwrap();
    let public = std::fs::read_to_string(p("signer.pub")).unwrap();
    assert!(
        secret.starts_with("seatgate-ed25519-secret-v1:"),
        "{secret}"
    );
    assert!(
        public.starts_with("seatgate-ed25519-public-v1:"),
        "{public}"
    );
    std::fs::write(
        p("b.json"),
        serde_json::to_string(&bundle(3, vec![spc("L1", 20)])).unwrap(),
    )
    .unwrap();
    let sign = |key: &str| {
        Command::new(bin())
            .args([
                "bundle",
                "sign",
                "--key",
                key,
                &p("b.json"),
                "-o",
                &p("s.json"),
            ])
            .output()
            .unwrap()
    };
    let out = sign(&p("signer.pub"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("PUBLIC key"), "{}", stderr(&out));
    // A public key copied under another name is still known by its kind.
    std::fs::copy(p("signer.pub"), p("renamed.key")).unwrap();
    assert_eq!(sign(&p("renamed.key")).status.code(), Some(1));
    // Files from before the prefix still work, by their name.
    let bare = |typed: &str| typed.split_once(':').unwrap().1.to_string();
    std::fs::write(p("old.key"), bare(&secret)).unwrap();
    std::fs::write(p("old.pub"), bare(&public)).unwrap();
    let out = sign(&p("old.pub"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a secret key"),
        "{}",
        stderr(&out)
    );
    let out = sign(&p("old.key"));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(bin())
        .args([
            "bundle",
            "verify",
            "--public-key",
            &p("old.pub"),
            &p("s.json"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The typed public key may go into trusted_keys as it is.
    let gw = Gateway::new(0);
    let config = gw.config().build().replace(
        &seatgate::license::bundle::encode_public_key(&gw.key.verifying_key()),
        &seatgate::license::bundle::public_key_file(&gw.key.verifying_key()),
    );
    std::fs::write(gw.config_path(), config).unwrap();
    let out = gw.cli(&["check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn evict_is_logged_with_the_operator() {
    let gw = Gateway::new(3);
    let d = gw.spawn("info");
    d.wait_ready();
    let server = FakeServer::start(&gw.socket());
    assert!(admitted(&server.try_call(&server.admit("k1")).unwrap()));
    let out = gw.cli(&["evict", "k1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, log) = d.wait_exit(std::time::Duration::from_secs(10));
    let uid = nix::unistd::geteuid().as_raw();
    let line = log
        .lines()
        .find(|l| l.contains("evict asked by an operator"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&format!("operator_uid={uid}")), "{line}");
    assert!(line.contains("key=k1"), "{line}");
}
