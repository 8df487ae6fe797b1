//! The license clock keeps running on the real daemon: with the system
//! clock behind the persisted mark (here: the mark and the license placed
//! in the future, so the real clock is "behind"), a license that ends 3 s
//! after the mark stops counting after 3 s of running time, not never.

use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use seatgate::license::{Binding, License};

use super::util::{bundle, Gateway, DEVICE};

#[test]
fn a_license_ending_after_the_mark_expires_on_time_with_the_clock_behind() {
    let gw = Gateway::new(0);
    let mark = Utc::now() + chrono::Duration::days(30);
    let end = mark + chrono::Duration::seconds(3);
    let start = end - chrono::Duration::days(365);
    let lic = License {
        id: "LIC-CLOCK".into(),
        product: "spc".into(),
        sku: "SPC-1YR-LIC".into(),
        seats: 20,
        term_days: 365,
        issued_at: start - chrono::Duration::days(1),
        associated_at: Some(start),
        activated_at: Some(start),
        device: DEVICE.into(),
        binding: Binding::Bound,
        pool: None,
    };
    let mut b = bundle(1, vec![lic]);
    b.not_after = mark + chrono::Duration::days(30);
    gw.write_bundle(&b);
    std::fs::create_dir_all(gw.path("state")).unwrap();
    let clock = serde_json::json!({ "high_water": mark });
    std::fs::write(gw.path("state/clock.json"), clock.to_string()).unwrap();

    let spawned = Instant::now();
    let d = gw.start();
    let s = d.status();
    assert!(
        s.now >= mark,
        "status now {} is the mark {mark} or later",
        s.now
    );
    assert_eq!(s.cap_total, 22, "the license counts until {end}");
    // It must drop 3 s after the daemon loaded the mark (status renderings
    // are cached up to 1 s): not before 3 s from the spawn, well within 6 s.
    let dropped = loop {
        let s = d.status();
        if s.cap_total == 2 {
            break spawned.elapsed();
        }
        assert_eq!(s.cap_total, 22);
        assert!(
            spawned.elapsed() < Duration::from_secs(6),
            "cap still {} after {:?}: the clock stood still at the mark (now {})",
            s.cap_total,
            spawned.elapsed(),
            s.now
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        dropped >= Duration::from_secs(3),
        "dropped after {dropped:?}"
    );
    // What the daemon persists is the trusted now: past the license's end.
    d.signal(Signal::SIGTERM);
    let (status, log) = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{log}");
    let text = std::fs::read_to_string(gw.path("state/clock.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
    let high: chrono::DateTime<Utc> = serde_json::from_value(saved["high_water"].clone()).unwrap();
    assert!(high >= end, "persisted mark {high} is past the end {end}");
}
