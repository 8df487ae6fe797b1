//! One status rendering shared by every reader: made off the runtime thread
//! when the state changed, handed to every reader until it changes again.
//! Readers that never read their answers hold renderings; past a budget
//! they get the newest existing one instead of a fresh copy each, and a
//! large table is not rendered again sooner than ten times its last cost,
//! so status readers, however many, cannot starve admissions.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// One rendered answer line, shared by its readers.
pub type Line = Arc<Vec<u8>>;
/// A rendering on its way: the answer line once it is made.
pub type Pending = watch::Receiver<Option<Line>>;

#[derive(Default)]
pub struct StatusCache(Mutex<Renderings>);

#[derive(Default)]
struct Renderings {
    /// The newest rendering: the state version it shows and when it began.
    latest: Option<(u64, Instant, Line)>,
    /// The rendering under way, and the version it shows.
    rendering: Option<(u64, Pending)>,
    /// Every rendering some reader may still hold.
    alive: Vec<Weak<Vec<u8>>>,
    /// How long the latest rendering took.
    cost: Duration,
}

/// What a status reader gets.
pub enum Lookup {
    Ready(Line),
    Rendering(Pending),
    /// Render it and give the result to `finish` with this sender.
    Render(watch::Sender<Option<Line>>),
}

/// A rendering is fresh for this long (status shows times and the cap,
/// which move with the clock alone).
const FRESH: Duration = Duration::from_secs(1);
/// The most bytes of older renderings alive at once.
const BUDGET: usize = 4 << 20;
/// A rendering that took more CPU time than this (thousands of sessions;
/// CPU time, so a busy machine does not make a small table look costly)
/// is not redone sooner than `SPACING` times its cost.
const CHEAP: Duration = Duration::from_millis(2);
const SPACING: u32 = 10;

impl StatusCache {
    pub fn lookup(&self, version: u64, now: Instant) -> Lookup {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, at, bytes)) = &r.latest {
            let age = now.duration_since(*at);
            let spaced = r.cost > CHEAP && age < r.cost * SPACING;
            if (*v == version && age < FRESH) || spaced {
                return Lookup::Ready(bytes.clone());
            }
        }
        if let Some((v, pending)) = &r.rendering {
            if *v == version || r.cost > CHEAP {
                return Lookup::Rendering(pending.clone());
            }
        }
        r.alive.retain(|w| w.strong_count() > 0);
        if let Some((_, _, latest)) = &r.latest {
            let older: usize = r
                .alive
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|b| !Arc::ptr_eq(b, latest))
                .map(|b| b.len())
                .sum();
            if older > BUDGET {
                return Lookup::Ready(latest.clone());
            }
        }
        let (done, pending) = watch::channel(None);
        r.rendering = Some((version, pending));
        Lookup::Render(done)
    }

    /// Makes the rendering begun at `started` for `version`: `write_json`
    /// appends the status JSON and returns what it cost (CPU time), and
    /// hands the answer line to its readers. The line is written once, in
    /// one buffer: a large table's is megabytes.
    pub fn finish(
        &self,
        version: u64,
        started: Instant,
        write_json: impl FnOnce(&mut Vec<u8>) -> Duration,
        done: watch::Sender<Option<Line>>,
    ) {
        let mut line = br#"{"ok":true,"status":"#.to_vec();
        let cost = write_json(&mut line);
        line.extend_from_slice(b"}\n");
        line.shrink_to_fit();
        let bytes: Line = Arc::new(line);
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.cost = cost;
        r.alive.push(Arc::downgrade(&bytes));
        if r.latest.as_ref().is_none_or(|(v, _, _)| *v <= version) {
            r.latest = Some((version, started, bytes.clone()));
        }
        if r.rendering.as_ref().is_some_and(|(v, _)| *v == version) {
            r.rendering = None;
        }
        drop(r);
        done.send_replace(Some(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(line: &mut Vec<u8>, json: &[u8], cost: Duration) -> Duration {
        line.extend_from_slice(json);
        cost
    }

    fn render(cache: &StatusCache, version: u64, at: Instant, json: &'static [u8]) -> Line {
        match cache.lookup(version, at) {
            Lookup::Render(done) => {
                let rx = done.subscribe();
                cache.finish(version, at, |b| write(b, json, Duration::ZERO), done);
                let bytes = rx.borrow().clone().unwrap();
                bytes
            }
            Lookup::Ready(b) => b,
            Lookup::Rendering(rx) => rx.borrow().clone().expect("finished"),
        }
    }

    #[test]
    fn one_rendering_per_version_shared_by_readers() {
        let cache = StatusCache::default();
        let t0 = Instant::now();
        let a = render(&cache, 1, t0, b"{\"n\":1}");
        assert_eq!(&*a, b"{\"ok\":true,\"status\":{\"n\":1}}\n");
        let b = render(&cache, 1, t0, b"other");
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same version is not rendered again"
        );
        let c = render(&cache, 2, t0, b"{\"n\":2}");
        assert!(!Arc::ptr_eq(&a, &c), "a new version is");
        // Readers arriving while a rendering is under way share it.
        let Lookup::Render(done) = cache.lookup(3, t0) else {
            panic!("a render is due")
        };
        let Lookup::Rendering(pending) = cache.lookup(3, t0) else {
            panic!("the one under way is shared")
        };
        cache.finish(3, t0, |b| write(b, b"3", Duration::ZERO), done);
        assert!(pending.borrow().is_some());
    }

    #[test]
    fn a_costly_rendering_is_not_redone_before_ten_times_its_cost() {
        let cache = StatusCache::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let Lookup::Render(done) = cache.lookup(1, t0) else {
            panic!("a render is due")
        };
        cache.finish(1, t0, |b| write(b, b"1", ms(5)), done);
        assert!(matches!(cache.lookup(2, t0 + ms(49)), Lookup::Ready(_)));
        assert!(matches!(cache.lookup(2, t0 + ms(51)), Lookup::Render(_)));
        // A cheap one is redone at once for a new version.
        let cheap = StatusCache::default();
        let Lookup::Render(done) = cheap.lookup(1, t0) else {
            panic!("a render is due")
        };
        cheap.finish(1, t0, |b| write(b, b"1", Duration::from_micros(50)), done);
        assert!(matches!(cheap.lookup(1, t0 + ms(1)), Lookup::Ready(_)));
        assert!(matches!(cheap.lookup(2, t0 + ms(1)), Lookup::Render(_)));
    }
}
