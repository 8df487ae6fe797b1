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
