//! The entry points as OpenVPN calls them, against a fake daemon on a temp
//! socket: verdicts in the deferred file, releases, deadlines, a late
//! answer, flat memory. (The real OpenVPN and daemon: tests/it/vpn_plugin.rs.)

use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void, CString};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seatgate::admission::protocol::{decode, AdmitResponse, ReleaseResponse, Request, Response};

use super::abi::*;
use super::*;

/// A daemon that admits up to `cap` keys, answering after `delay`.
struct FakeDaemon {
    held: Arc<Mutex<HashSet<String>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeDaemon {
    fn start(path: &Path, cap: usize, delay: Duration) -> FakeDaemon {
        let listener = UnixListener::bind(path).unwrap();
        let held = Arc::new(Mutex::new(HashSet::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (h, l) = (held.clone(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (h, l) = (h.clone(), l.clone());
                std::thread::spawn(move || serve(stream, cap, delay, h, l));
            }
        });
        FakeDaemon { held, log }
    }

    fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(
    stream: UnixStream,
    cap: usize,
    delay: Duration,
    held: Arc<Mutex<HashSet<String>>>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let mut w = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        std::thread::sleep(delay);
        let resp = match decode(line.as_bytes()).unwrap() {
            Request::Admit(a) => {
                let mut h = held.lock().unwrap();
                note(&log, format!("admit {}", a.key));
                let admitted = h.contains(&a.key) || h.len() < cap;
                if admitted {
                    h.insert(a.key);
                }
                Response::Admit(AdmitResponse {
                    ok: true,
                    admitted,
                    again: false,
                    reason: None,
                    message: (!admitted).then(|| format!("all {cap} seats are in use")),
                    cap: cap as u32,
                    in_use: h.len() as u32,
                })
            }
            Request::Release { key } => {
                let mut h = held.lock().unwrap();
                note(&log, format!("release {key}"));
                let released = h.remove(&key);
                Response::Release(ReleaseResponse {
                    ok: true,
                    released,
                    in_use: h.len() as u32,
                    sessions: None,
                })
            }
            other => panic!("unexpected {other:?}"),
        };
        if w.write_all(&resp.encode()).is_err() {
            return;
        }
    }
}

/// Keeps the first requests only: the memory test must not measure this.
fn note(log: &Mutex<Vec<String>>, line: String) {
    let mut log = log.lock().unwrap();
    if log.len() < 100 {
        log.push(line);
    }
}

/// A NULL-terminated C string array that lives as long as it.
struct CArray {
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CArray {
    fn new(items: &[String]) -> CArray {
        let strings: Vec<CString> = items
            .iter()
            .map(|s| CString::new(s.as_str()).unwrap())
            .collect();
        let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        CArray {
            _strings: strings,
            ptrs,
        }
    }
}

struct Loaded {
    handle: *mut c_void,
}

impl Loaded {
    fn open(args: &[&str]) -> Result<Loaded, c_int> {
        let mut argv = vec!["/usr/lib/seatgate/seatgate-openvpn.so".to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        let argv = CArray::new(&argv);
        let envp = CArray::new(&[]);
        let args = OpenIn {
            type_mask: 0xffff,
            argv: argv.ptrs.as_ptr(),
            envp: envp.ptrs.as_ptr(),
        };
        let mut ret = OpenReturn {
            type_mask: 0,
            handle: std::ptr::null_mut(),
            return_list: std::ptr::null_mut(),
        };
        let rc = unsafe { openvpn_plugin_open_v3(5, &args, &mut ret) };
        if rc != FUNC_SUCCESS {
            return Err(rc);
        }
        assert_eq!(
            ret.type_mask,
            mask(CLIENT_CONNECT) | mask(CLIENT_DISCONNECT)
        );
        Ok(Loaded { handle: ret.handle })
    }

    fn call(&self, call: c_int, env: &[String]) -> c_int {
        let argv = CArray::new(&["/usr/lib/seatgate/seatgate-openvpn.so".to_string()]);
        let envp = CArray::new(env);
        let args = FuncIn {
            call,
            argv: argv.ptrs.as_ptr(),
            envp: envp.ptrs.as_ptr(),
            handle: self.handle,
        };
        unsafe { openvpn_plugin_func_v3(5, &args, std::ptr::null_mut()) }
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        unsafe { openvpn_plugin_close_v1(self.handle) };
    }
}

/// A client's environment as OpenVPN 2.6 gives it to a plugin (no script_type).
fn client_env(n: usize, file: Option<&Path>) -> Vec<String> {
    let mut env = vec![
        "daemon_pid=4242".to_string(),
        "daemon_start_time=1700000000".into(),
        format!("time_unix={}", 1700000100 + n),
        format!("common_name=client{n}"),
        format!("ifconfig_pool_remote_ip=10.8.0.{}", 2 + n % 200),
        "trusted_ip=127.0.0.1".into(),
    ];
    if let Some(f) = file {
        env.push(format!("client_connect_deferred_file={}", f.display()));
    }
    env
}

fn key(n: usize) -> String {
    format!(
        "openvpn:4242:1700000000:{}:client{n}:10.8.0.{}",
        1700000100 + n,
        2 + n % 200
    )
}

/// A fresh deferred file, as OpenVPN makes one (empty).
fn deferred_file(dir: &Path, n: usize) -> PathBuf {
    let f = dir.join(format!("ccr{n}"));
    std::fs::write(&f, "").unwrap();
    f
}

/// Waits for the verdict written to `file`.
fn verdict(file: &Path, limit: Duration) -> Option<char> {
    let end = Instant::now() + limit;
    loop {
        if let Some(c) = std::fs::read_to_string(file).unwrap().chars().next() {
            return Some(c);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn wait(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn bad_plugin_arguments_refuse_to_load() {
    assert_eq!(Loaded::open(&["timeout_ms=0"]).err(), Some(FUNC_ERROR));
    assert_eq!(Loaded::open(&["colour=blue"]).err(), Some(FUNC_ERROR));
}

#[test]
fn deferred_verdicts_follow_the_cap_and_disconnects_release_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let d = FakeDaemon::start(&sock, 2, Duration::ZERO);
    let p = Loaded::open(&[&format!("socket={}", sock.display()), "wait_ms=0"]).unwrap();
    let files: Vec<PathBuf> = (1..=3).map(|n| deferred_file(dir.path(), n)).collect();
    for (n, f) in (1..=3).zip(&files) {
        assert_eq!(
            p.call(CLIENT_CONNECT, &client_env(n, Some(f))),
            FUNC_DEFERRED
        );
    }
    let got: Vec<Option<char>> = files
        .iter()
        .map(|f| verdict(f, Duration::from_secs(2)))
        .collect();
    assert_eq!(got, [Some('1'), Some('1'), Some('0')]);
    // The server is this process, not the environment's daemon_pid.
    assert_eq!(d.held(), 2);
    // The refused client's disconnect (OpenVPN sends one) frees nothing;
    // an admitted one's frees its seat; neither waits.
    let t = Instant::now();
    assert_eq!(
        p.call(CLIENT_DISCONNECT, &client_env(3, None)),
        FUNC_SUCCESS
    );
    assert_eq!(
        p.call(CLIENT_DISCONNECT, &client_env(1, None)),
        FUNC_SUCCESS
    );
    assert!(t.elapsed() < Duration::from_millis(5), "{:?}", t.elapsed());
    wait("the release", Duration::from_secs(2), || d.held() == 1);
    assert_eq!(
        d.requests(),
        [
            format!("admit {}", key(1)),
            format!("admit {}", key(2)),
            format!("admit {}", key(3)),
            format!("release {}", key(3)),
            format!("release {}", key(1)),
        ],
        "the keys are the script hook's"
    );
    // A refill gets the freed seat.
    let f = deferred_file(dir.path(), 4);
    assert_eq!(
        p.call(CLIENT_CONNECT, &client_env(4, Some(&f))),
        FUNC_DEFERRED
    );
    assert_eq!(verdict(&f, Duration::from_secs(2)), Some('1'));
}

#[test]
fn no_daemon_refuses_at_once_and_a_late_answer_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    // No daemon: refused at once, not at the deadline.
    let p = Loaded::open(&[&format!("socket={}", sock.display()), "timeout_ms=2000"]).unwrap();
    let f = deferred_file(dir.path(), 1);
    let t = Instant::now();
    assert_eq!(p.call(CLIENT_CONNECT, &client_env(1, Some(&f))), FUNC_ERROR);
    assert!(t.elapsed() < Duration::from_millis(25), "{:?}", t.elapsed());
    drop(p);
    // The same when the verdict is deferred (wait_ms=0): written at once.
    let p = Loaded::open(&[
        &format!("socket={}", sock.display()),
        "timeout_ms=2000",
        "wait_ms=0",
    ])
    .unwrap();
    let t = Instant::now();
    assert_eq!(
        p.call(CLIENT_CONNECT, &client_env(1, Some(&f))),
        FUNC_DEFERRED
    );
    assert_eq!(verdict(&f, Duration::from_secs(3)), Some('0'));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    drop(p);

    // A slow daemon: refused at the deadline, and when its admission
    // arrives after all, the plugin releases it.
    let d = FakeDaemon::start(&sock, 5, Duration::from_millis(300));
    let p = Loaded::open(&[&format!("socket={}", sock.display()), "timeout_ms=100"]).unwrap();
    let f = deferred_file(dir.path(), 2);
    let t = Instant::now();
    p.call(CLIENT_CONNECT, &client_env(2, Some(&f)));
    assert_eq!(verdict(&f, Duration::from_secs(2)), Some('0'));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(290),
        "{took:?}"
    );
    wait(
        "the late seat to be given back",
        Duration::from_secs(3),
        || d.requests().contains(&format!("release {}", key(2))),
    );
    assert_eq!(d.held(), 0);

    // on_error=admit lets the client in when the daemon is slow.
    let p2 = Loaded::open(&[
        &format!("socket={}", sock.display()),
        "timeout_ms=50",
        "on_error=admit",
    ])
    .unwrap();
    let f = deferred_file(dir.path(), 3);
    p2.call(CLIENT_CONNECT, &client_env(3, Some(&f)));
    assert_eq!(verdict(&f, Duration::from_secs(2)), Some('1'));
}

#[test]
fn a_hung_daemon_resolves_many_concurrent_clients_within_one_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    // Bound and listening, never accepting: what SIGSTOP looks like.
    let _listener = UnixListener::bind(&sock).unwrap();
    let p = Loaded::open(&[&format!("socket={}", sock.display()), "timeout_ms=200"]).unwrap();
    let files: Vec<PathBuf> = (1..=20).map(|n| deferred_file(dir.path(), n)).collect();
    let t = Instant::now();
    for (n, f) in (1..=20).zip(&files) {
        assert_eq!(
            p.call(CLIENT_CONNECT, &client_env(n, Some(f))),
            FUNC_DEFERRED
        );
    }
    let calls = t.elapsed();
    // The first call waits wait_ms (20) for a quick answer; the others
    // defer at once: the daemon has not answered since.
    assert!(calls < Duration::from_millis(60), "20 calls took {calls:?}");
    for f in &files {
        assert_eq!(verdict(f, Duration::from_secs(2)), Some('0'));
    }
    let all = t.elapsed();
    assert!(
        all < Duration::from_millis(400),
        "all resolved after {all:?}"
    );
}

#[test]
fn a_quick_answer_is_returned_directly_and_no_file_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let d = FakeDaemon::start(&sock, 1, Duration::ZERO);
    let p = Loaded::open(&[&format!("socket={}", sock.display())]).unwrap();
    let (f1, f2) = (deferred_file(dir.path(), 1), deferred_file(dir.path(), 2));
    assert_eq!(
        p.call(CLIENT_CONNECT, &client_env(1, Some(&f1))),
        FUNC_SUCCESS
    );
    assert_eq!(
        p.call(CLIENT_CONNECT, &client_env(2, Some(&f2))),
        FUNC_ERROR
    );
    assert_eq!(d.held(), 1);
    std::thread::sleep(Duration::from_millis(50));
    for f in [&f1, &f2] {
        assert_eq!(
            std::fs::read_to_string(f).unwrap(),
            "",
            "the verdict went back directly"
        );
    }
}

/// The resident set of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn memory_stays_flat_over_thousands_of_connects() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let d = FakeDaemon::start(&sock, 10, Duration::ZERO);
    let p = Loaded::open(&[&format!("socket={}", sock.display()), "wait_ms=0"]).unwrap();
    let f = dir.path().join("ccr");
    let cycle = |n: usize| {
        std::fs::write(&f, "").unwrap();
        assert_eq!(
            p.call(CLIENT_CONNECT, &client_env(n, Some(&f))),
            FUNC_DEFERRED
        );
        assert_eq!(verdict(&f, Duration::from_secs(2)), Some('1'));
        p.call(CLIENT_DISCONNECT, &client_env(n, None));
    };
    for n in 0..1000 {
        cycle(n);
    }
    let before = rss_kib();
    for n in 1000..11000 {
        cycle(n);
    }
    wait("the last release", Duration::from_secs(2), || d.held() == 0);
    let after = rss_kib();
    eprintln!("RSS after 1000 connects {before} KiB, after 11000 {after} KiB");
    // 10,000 connects: a leak of 100 bytes each would show as ~1 MiB.
    assert!(
        after < before + 768,
        "RSS grew from {before} KiB to {after} KiB over 10000 connects"
    );
}
