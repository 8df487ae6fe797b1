//! ocserv's connect-script / disconnect-script environment to an action.
//! `ID` is the worker process serving the session (the id occtl shows): it
//! lives exactly as long as the session, so it is both the key and the
//! process whose death frees the seat.

use std::collections::HashMap;

use super::{get, phase, pid, Action, EnvError};
use crate::admission::protocol::{AdmitRequest, ServerKind, ServerRef};

pub fn action(env: &HashMap<String, String>) -> Result<Action, EnvError> {
    let pid = pid(env, "ID", "worker process id")?;
    let key = format!("ocserv:{pid}:{}", get(env, "USERNAME"));
    let phase = phase(
        env,
        "REASON",
        ["connect", "disconnect"],
        "connect-script and disconnect-script",
    )?;
    Ok(phase.action(AdmitRequest {
        key,
        user: get(env, "USERNAME").to_string(),
        server: ServerRef {
            kind: ServerKind::Ocserv,
            pid,
        },
        remote: get(env, "IP_REAL").to_string(),
        group: get(env, "GROUPNAME").to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn real_ocserv_environment() {
        let env = sample(include_str!(
            "../../tests/vpn/env-samples/ocserv-connect.env"
        ));
        let Action::Connect(req) = action(&env).unwrap() else {
            panic!("connect expected")
        };
        assert_eq!(req.user, "user1");
        assert_eq!(
            req.server,
            ServerRef {
                kind: ServerKind::Ocserv,
                pid: 14500
            }
        );
        assert_eq!(req.key, "ocserv:14500:user1");
        assert_eq!(req.group, "");
        let mut env = env;
        env.insert("GROUPNAME".into(), "ops".into());
        let Action::Connect(req) = action(&env).unwrap() else {
            panic!("connect expected")
        };
        assert_eq!(req.group, "ops");
        env.insert("REASON".into(), "disconnect".into());
        assert_eq!(
            action(&env).unwrap(),
            Action::Disconnect {
                key: "ocserv:14500:user1".into()
            }
        );
        env.insert("REASON".into(), "host-update".into());
        assert!(action(&env).is_err());
        env.remove("ID");
        assert!(action(&env)
            .unwrap_err()
            .to_string()
            .contains("ID is not set"));
    }
}
