//! OpenVPN's client-connect / client-disconnect environment to an action.
//! OpenVPN has no session id; the key joins what stays the same from
//! connect to disconnect of one client instance: the server instance
//! (`daemon_pid`, `daemon_start_time`), the instance's creation time
//! (`time_unix`), `common_name` and the pool address. `trusted_port` can
//! change and is left out. The user's group for `[policy]` is the value of
//! the variable `SEATGATE_GROUP_VAR` names (set by `--setenv`, e.g.
//! `X509_0_OU`, or a variable the server's auth sets); none without it.

use std::collections::HashMap;

use super::{get, need, phase, pid, Action, EnvError};
use crate::admission::protocol::{AdmitRequest, ServerKind, ServerRef};

/// The variable naming the variable that holds the user's group.
pub const GROUP_VAR: &str = "SEATGATE_GROUP_VAR";

pub fn action(env: &HashMap<String, String>) -> Result<Action, EnvError> {
    let pid = pid(env, "daemon_pid", "process id")?;
    let cn = get(env, "common_name");
    let user = [get(env, "username"), cn]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("");
    let key = format!(
        "openvpn:{pid}:{}:{}:{cn}:{}",
        get(env, "daemon_start_time"),
        need(env, "time_unix")?,
        get(env, "ifconfig_pool_remote_ip")
    );
    let phase = phase(
        env,
        "script_type",
        ["client-connect", "client-disconnect"],
        "client-connect and client-disconnect",
    )?;
    Ok(phase.action(AdmitRequest {
        key,
        user: user.to_string(),
        server: ServerRef {
            kind: ServerKind::Openvpn,
            pid,
        },
        remote: get(env, "trusted_ip").to_string(),
        group: get(env, get(env, GROUP_VAR)).to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    fn key(a: &Action) -> &str {
        match a {
            Action::Connect(r) => &r.key,
            Action::Disconnect { key } => key,
        }
    }

    #[test]
    fn real_openvpn_environments_give_matching_keys() {
        let connect = action(&sample(include_str!(
            "../../tests/vpn/env-samples/openvpn-client-connect-admitted.env"
        )))
        .unwrap();
        let disconnect = action(&sample(include_str!(
            "../../tests/vpn/env-samples/openvpn-client-disconnect-admitted-pingtimeout.env"
        )))
        .unwrap();
        let Action::Connect(req) = &connect else {
            panic!("connect expected: {connect:?}")
        };
        assert_eq!(req.user, "client1");
        assert_eq!(req.server.kind, ServerKind::Openvpn);
        assert_eq!(req.remote, "127.0.0.1");
        assert!(matches!(disconnect, Action::Disconnect { .. }));
        assert_eq!(
            key(&connect),
            key(&disconnect),
            "connect and disconnect of one client share a key"
        );
    }

    #[test]
    fn the_group_is_the_variable_seatgate_group_var_names() {
        let mut env = sample(include_str!(
            "../../tests/vpn/env-samples/openvpn-client-connect-admitted.env"
        ));
        let group = |env: &HashMap<String, String>| match action(env).unwrap() {
            Action::Connect(r) => r.group,
            other => panic!("connect expected: {other:?}"),
        };
        assert_eq!(group(&env), "", "no variable named: no group");
        env.insert(GROUP_VAR.into(), "X509_0_OU".into());
        assert_eq!(group(&env), "", "the named variable is unset");
        env.insert("X509_0_OU".into(), "ops".into());
        assert_eq!(group(&env), "ops");
        env.insert(GROUP_VAR.into(), "common_name".into());
        assert_eq!(group(&env), "client1");
    }

    #[test]
    fn rejected_client_disconnect_has_its_own_key() {
        let rejected = action(&sample(include_str!(
            "../../tests/vpn/env-samples/openvpn-client-connect-rejected.env"
        )))
        .unwrap();
        let after = action(&sample(include_str!(
            "../../tests/vpn/env-samples/openvpn-client-disconnect-after-reject.env"
        )))
        .unwrap();
        assert_eq!(key(&rejected), key(&after));
        let admitted = action(&sample(include_str!(
            "../../tests/vpn/env-samples/openvpn-client-connect-admitted.env"
        )))
        .unwrap();
        assert_ne!(key(&rejected), key(&admitted));
    }

    #[test]
    fn missing_or_odd_variables_are_errors() {
        let mut env =
            sample("script_type=client-connect\ndaemon_pid=12\ntime_unix=5\ncommon_name=a");
        assert!(action(&env).is_ok());
        env.insert("script_type".into(), "up".into());
        assert!(action(&env)
            .unwrap_err()
            .to_string()
            .contains("client-connect and client-disconnect only"));
        env.insert("daemon_pid".into(), "x".into());
        assert!(action(&env)
            .unwrap_err()
            .to_string()
            .contains("not a process id"));
        env.remove("daemon_pid");
        assert!(action(&env)
            .unwrap_err()
            .to_string()
            .contains("daemon_pid is not set"));
    }
}
