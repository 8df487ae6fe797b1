//! seatgate's OpenVPN 2.6 plugin: seat admission inside the server process,
//! client-connect deferred, so the server never waits for seatgate.
//!
//! `plugin /usr/lib/seatgate/seatgate-openvpn.so socket=PATH timeout_ms=N
//! on_error=reject|admit group_var=NAME` in server.conf (docs/openvpn.md).
//!
//! - `abi`: the few openvpn-plugin.h structs used, by hand.
//! - `settings`: the `plugin` line's arguments (pure).
//! - `worker`: the plugin's thread: one pipelined connection to the daemon,
//!   verdicts written to `client_connect_deferred_file`, releases queued.
//! - here: the exported entry points. Each returns within microseconds and
//!   catches every panic (the plugin is built with `--profile plugin`,
//!   which unwinds), so nothing can take the VPN server down.

mod abi;
mod settings;
mod worker;

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi::{
    FuncIn, OpenIn, OpenReturn, CLIENT_CONNECT, CLIENT_DISCONNECT, FUNC_ERROR, FUNC_SUCCESS,
};

// catch_unwind is what keeps a bug from killing OpenVPN; with panic=abort
// it would catch nothing. `cargo build --release` of the workspace aborts.
#[cfg(panic = "abort")]
compile_error!(
    "the OpenVPN plugin must unwind on panic: build it with `cargo build --profile plugin -p seatgate-openvpn`"
);

/// One line in OpenVPN's log (its stderr), like the script hook's lines.
/// Never panics, from any thread.
pub(crate) fn log(line: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr().lock(), "seatgate plugin openvpn: {line}");
}

/// Runs an entry point; a panic becomes `fallback` and a log line.
fn guard(what: &str, fallback: c_int, f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log(format_args!(
            "internal error in {what}; answering {fallback} (please report this)"
        ));
        fallback
    })
}

fn env_map(envp: Vec<String>) -> HashMap<String, String> {
    envp.into_iter()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Called when OpenVPN loads the plugin.
///
/// # Safety
/// OpenVPN passes valid `args` and `ret` (openvpn-plugin.h).
#[no_mangle]
pub unsafe extern "C" fn openvpn_plugin_open_v3(
    _version: c_int,
    args: *const OpenIn,
    ret: *mut OpenReturn,
) -> c_int {
    guard("open", FUNC_ERROR, || {
        if args.is_null() || ret.is_null() {
            return FUNC_ERROR;
        }
        let args = &*args;
        let argv = abi::strings(args.argv);
        let settings = match settings::parse(argv.get(1..).unwrap_or_default()) {
            Ok(s) => s,
            Err(why) => {
                log(format_args!("cannot load: {why}"));
                return FUNC_ERROR;
            }
        };
        let wanted = abi::mask(CLIENT_CONNECT) | abi::mask(CLIENT_DISCONNECT);
        if args.type_mask & wanted != wanted {
            log(format_args!(
                "cannot load: this OpenVPN does not offer client-connect and client-disconnect to plugins"
            ));
            return FUNC_ERROR;
        }
        let handle = match worker::Handle::start(settings) {
            Ok(h) => h,
            Err(e) => {
                log(format_args!("cannot load: cannot start its thread: {e}"));
                return FUNC_ERROR;
            }
        };
        let s = handle.settings();
        log(format_args!(
            "loaded: socket={} timeout_ms={} wait_ms={} on_error={} group_var={}",
            s.socket.display(),
            s.timeout.as_millis(),
            s.wait.as_millis(),
            match s.on_error {
                seatgate::hook::OnError::Reject => "reject",
                seatgate::hook::OnError::Admit => "admit",
            },
            s.group_var.as_deref().unwrap_or("-")
        ));
        (*ret).type_mask = wanted;
        (*ret).handle = Box::into_raw(Box::new(handle)).cast::<c_void>();
        FUNC_SUCCESS
    })
}

/// Called for each client-connect and client-disconnect.
///
/// # Safety
/// OpenVPN passes valid `args`, whose handle is the one open_v3 returned.
#[no_mangle]
pub unsafe extern "C" fn openvpn_plugin_func_v3(
    _version: c_int,
    args: *const FuncIn,
    _ret: *mut c_void,
) -> c_int {
    if args.is_null() {
        return FUNC_ERROR;
    }
    let call = (*args).call;
    // A connect that cannot be handled is refused; a disconnect always succeeds.
    let fallback = if call == CLIENT_CONNECT {
        FUNC_ERROR
    } else {
        FUNC_SUCCESS
    };
    guard("client call", fallback, || {
        let args = &*args;
        let Some(handle) = args.handle.cast::<worker::Handle>().as_ref() else {
            return fallback;
        };
        let env = env_map(abi::strings(args.envp));
        match call {
            CLIENT_CONNECT => handle.connect(env),
            CLIENT_DISCONNECT => handle.disconnect(env),
            _ => FUNC_SUCCESS,
        }
    })
}

/// Called before OpenVPN unloads the plugin (exit, SIGHUP): sends what is
/// queued (at most half a second) and joins the plugin's threads, so no
/// code of the library runs after it is unmapped.
///
/// # Safety
/// `handle` is the one open_v3 returned, not used after this.
#[no_mangle]
pub unsafe extern "C" fn openvpn_plugin_close_v1(handle: *mut c_void) {
    guard("close", 0, || {
        if !handle.is_null() {
            Box::from_raw(handle.cast::<worker::Handle>()).stop();
        }
        0
    });
}

#[cfg(test)]
mod tests;
