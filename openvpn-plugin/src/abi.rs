//! The few parts of OpenVPN's plugin ABI (openvpn-plugin.h, v3 structs)
//! the plugin uses, written by hand. Only the leading fields are declared:
//! the plugin reads them through pointers OpenVPN owns and never creates or
//! copies these structs, so later fields (added by newer OpenVPN versions)
//! do not matter.

use std::ffi::{c_char, c_int, c_void};

/// `OPENVPN_PLUGIN_CLIENT_CONNECT`: the (v1) connect call whose verdict may
/// be deferred and written to `client_connect_deferred_file` later.
pub const CLIENT_CONNECT: c_int = 6;
pub const CLIENT_DISCONNECT: c_int = 7;

pub const FUNC_SUCCESS: c_int = 0;
pub const FUNC_ERROR: c_int = 1;
pub const FUNC_DEFERRED: c_int = 2;

pub const fn mask(call: c_int) -> c_int {
    1 << call
}

/// `struct openvpn_plugin_args_open_in` (leading fields).
#[repr(C)]
pub struct OpenIn {
    pub type_mask: c_int,
    /// NULL-terminated; argv[0] is the library's path, then the `plugin`
    /// line's arguments.
    pub argv: *const *const c_char,
    pub envp: *const *const c_char,
}

/// `struct openvpn_plugin_args_open_return`.
#[repr(C)]
pub struct OpenReturn {
    pub type_mask: c_int,
    pub handle: *mut c_void,
    pub return_list: *mut c_void,
}

/// `struct openvpn_plugin_args_func_in` (leading fields).
#[repr(C)]
pub struct FuncIn {
    pub call: c_int,
    pub argv: *const *const c_char,
    /// NULL-terminated `name=value` strings: the client's environment.
    pub envp: *const *const c_char,
    pub handle: *mut c_void,
}

/// Reads a NULL-terminated array of C strings (lossy UTF-8).
///
/// # Safety
/// `list` is NULL or points to a NULL-terminated array of valid C strings.
pub unsafe fn strings(list: *const *const c_char) -> Vec<String> {
    let mut out = Vec::new();
    if list.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        let p = *list.add(i);
        if p.is_null() {
            return out;
        }
        out.push(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned());
        i += 1;
    }
}
