//! `[policy]`: who may hold which seats. A per-user session limit and
//! `[[policy.group]]` entries that reserve seats for named users and groups
//! or cap them. Read from the TOML value by hand (a serde shape costs the
//! gateway's flash more) into `SeatPolicy`, with every wrong key and every
//! contradiction reported by key (pure). docs/policy.md explains the rules.

use std::collections::BTreeMap;

use toml::Value;

use super::keys::locate;
use super::{problem, Problem};

/// The most seats one entry may reserve or be capped at (as many as the
/// largest license may have).
pub const MAX_SEATS: u32 = 100_000;

/// What a new session of a user at `max_sessions_per_user` gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AtUserLimit {
    /// Refused (`user_limit`); the user's sessions keep their seats.
    #[default]
    Refuse,
    /// Admitted in the seat of the user's oldest session, which is
    /// disconnected through its VPN server (Cisco ASA's behaviour).
    ReplaceOldest,
}

/// The validated `[policy]`. The default: no rule at all. Made by `new`,
/// which indexes the entries' names (every admission looks each session up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeatPolicy {
    /// Sessions one user name may hold across every VPN server (None: no
    /// limit). Sessions with no user name are never limited.
    pub max_sessions_per_user: Option<u32>,
    pub at_user_limit: AtUserLimit,
    pub groups: Vec<Group>,
    /// The entry naming each user, and each group. (u32: the map type the
    /// daemon has already, so no new code on the gateway's flash.)
    by_user: BTreeMap<String, u32>,
    by_group: BTreeMap<String, u32>,
    /// Whether a `[[reconcile]]` entry can end OpenVPN, ocserv sessions:
    /// `replace_oldest` replaces only sessions the daemon can disconnect
    /// (a replaced session left up would hold no seat).
    pub ends_openvpn: bool,
    pub ends_ocserv: bool,
}

/// One `[[policy.group]]`: its members are the sessions whose user name is
/// in `users`, or else whose server-reported group is in `groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    /// Seats nobody else may take (0: none).
    pub reserved: u32,
    /// The most seats the members may hold together (None: the cap).
    pub max: Option<u32>,
}

impl AtUserLimit {
    /// The config's (and status's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            AtUserLimit::Refuse => "refuse",
            AtUserLimit::ReplaceOldest => "replace_oldest",
        }
    }
}

/// Whether two user or group names are the same to the policy: equal
/// regardless of ASCII case. Directory backends (LDAP, RADIUS) let "Alice"
/// log in as alice; a limit or a `max = 0` must not be escaped that way.
pub fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl SeatPolicy {
    pub fn new(
        max_sessions_per_user: Option<u32>,
        at_user_limit: AtUserLimit,
        groups: Vec<Group>,
    ) -> SeatPolicy {
        let (mut by_user, mut by_group) = (BTreeMap::new(), BTreeMap::new());
        for (i, g) in (0u32..).zip(&groups) {
            for u in &g.users {
                by_user.entry(u.to_ascii_lowercase()).or_insert(i);
            }
            for n in &g.groups {
                by_group.entry(n.to_ascii_lowercase()).or_insert(i);
            }
        }
        SeatPolicy {
            max_sessions_per_user,
            at_user_limit,
            groups,
            by_user,
            by_group,
            ends_openvpn: false,
            ends_ocserv: false,
        }
    }

    /// The same, knowing which servers' sessions can be ended.
    pub fn ending(mut self, openvpn: bool, ocserv: bool) -> SeatPolicy {
        (self.ends_openvpn, self.ends_ocserv) = (openvpn, ocserv);
        self
    }

    /// True when no rule is set: admission is the cap alone.
    pub fn is_empty(&self) -> bool {
        self.max_sessions_per_user.is_none() && self.groups.is_empty()
    }

    /// The entry a session of `user` reporting `group` belongs to: the one
    /// naming the user, else the one naming the group. Empty names are in
    /// none. Names match regardless of ASCII case (`same_name`).
    pub fn entry_of(&self, user: &str, group: &str) -> Option<usize> {
        let find = |map: &BTreeMap<String, u32>, name: &str| {
            if name.is_empty() {
                return None;
            }
            // Most names are lower case already: no copy for them.
            let found = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                map.get(&name.to_ascii_lowercase())
            } else {
                map.get(name)
            };
            found.map(|&i| i as usize)
        };
        find(&self.by_user, user).or_else(|| find(&self.by_group, group))
    }

    /// Seats reserved by every entry together.
    pub fn reserved(&self) -> u32 {
        self.groups
            .iter()
            .fold(0u32, |n, g| n.saturating_add(g.reserved))
    }
}

/// The words for a TOML value's kind, in problems.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "a whole number",
        Value::Float(_) => "a decimal number",
        Value::Boolean(_) => "true/false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// Reads and checks one entry's or the section's keys.
struct Reader<'a> {
    text: &'a str,
    problems: &'a mut Vec<Problem>,
}

impl Reader<'_> {
    /// `key` as problems name it: with its line for `[policy]`'s own keys.
    fn say(&mut self, key: &str, message: String) {
        let shown = match key.strip_prefix("policy.") {
            Some(name) if !name.contains('.') => match locate(self.text, "policy", name) {
                Some((_, line)) => format!("{key} (line {line})"),
                None => key.to_string(),
            },
            _ => key.to_string(),
        };
        self.problems.push(problem(&shown, message));
    }

    /// A whole number from `min` to `MAX_SEATS`.
    fn seats(&mut self, key: &str, v: &Value, min: u32) -> Option<u32> {
        match v.as_integer().map(u32::try_from) {
            Some(Ok(n)) if (min..=MAX_SEATS).contains(&n) => Some(n),
            _ => {
                let got = match v {
                    Value::Integer(n) => format!("{n}"),
                    other => kind(other).to_string(),
                };
                self.say(
                    key,
                    format!("expected a whole number from {min} to {MAX_SEATS}, got {got}"),
                );
                None
            }
        }
    }

    fn names(&mut self, key: &str, v: &Value) -> Option<Vec<String>> {
        let list = v.as_array().map(|a| {
            a.iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
        });
        let list = list.flatten();
        if list.is_none() {
            self.say(
                key,
                format!("expected a list of names in quotes, got {}", kind(v)),
            );
        }
        list
    }

    fn unknown(&mut self, key: &str, known: &str) {
        let name = key.rsplit('.').next().unwrap_or(key);
        self.say(
            key,
            format!("unknown key {name:?}; the keys here are {known}"),
        );
    }
}

/// Reads `[policy]` (its TOML value, set aside from the rest of the config;
/// `text` for line numbers), adding every problem and contradiction.
pub(super) fn read(value: Option<Value>, text: &str, problems: &mut Vec<Problem>) -> SeatPolicy {
    let mut r = Reader { text, problems };
    let mut policy = SeatPolicy::default();
    let table = match value {
        None => return policy,
        Some(Value::Table(t)) => t,
        Some(other) => {
            r.say(
                "policy",
                format!("expected a table [policy], got {}", kind(&other)),
            );
            return policy;
        }
    };
    let mut entries = Vec::new();
    for (k, v) in &table {
        let key = format!("policy.{k}");
        match k.as_str() {
            "max_sessions_per_user" => {
                if v.as_integer() == Some(0) {
                    r.say(&key, "0 would refuse every session; set 1 or more, or remove the key for no limit".into());
                } else {
                    policy.max_sessions_per_user = r.seats(&key, v, 1);
                }
            }
            "at_user_limit" => match v.as_str() {
                Some("refuse") => policy.at_user_limit = AtUserLimit::Refuse,
                Some("replace_oldest") => policy.at_user_limit = AtUserLimit::ReplaceOldest,
                _ => {
                    let got = v.as_str().map_or(kind(v).to_string(), |s| format!("{s:?}"));
                    r.say(&key, format!("{got} is not one of: refuse, replace_oldest"));
                }
            },
            "group" => match v.as_array() {
                Some(items) => entries = items.clone(),
                None => r.say(
                    &key,
                    format!("expected [[policy.group]] entries, got {}", kind(v)),
                ),
            },
            _ => r.unknown(&key, "max_sessions_per_user, at_user_limit, group"),
        }
    }
    // Every name seen, with the entry that named it first.
    let mut seen: Vec<(&'static str, String, String)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = |k: &str| format!("policy.group[{i}].{k}");
        let Some(fields) = entry.as_table() else {
            r.say(
                &format!("policy.group[{i}]"),
                format!("expected a table, got {}", kind(entry)),
            );
            continue;
        };
        let mut g = Group {
            name: String::new(),
            users: Vec::new(),
            groups: Vec::new(),
            reserved: 0,
            max: None,
        };
        let mut bad = false;
        for (k, v) in fields {
            match k.as_str() {
                "name" => g.name = v.as_str().unwrap_or_default().to_string(),
                "users" | "groups" => {
                    let names = r.names(&key(k), v);
                    // A wrong list is reported as such, not again as missing.
                    bad |= names.is_none();
                    let list = if k == "users" {
                        &mut g.users
                    } else {
                        &mut g.groups
                    };
                    *list = names.unwrap_or_default();
                }
                "reserved" => g.reserved = r.seats(&key(k), v, 0).unwrap_or(0),
                "max" => g.max = r.seats(&key(k), v, 0),
                _ => r.unknown(&key(k), "name, users, groups, reserved, max"),
            }
        }
        let shown = format!("{:?}", g.name);
        if !(1..=64).contains(&g.name.len())
            || !g
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            r.say(&key("name"), format!("{shown} is not a name; use letters, digits, '-' and '_' (1-64 characters), e.g. name = \"oncall\""));
        }
        if policy.groups.iter().any(|o| o.name == g.name) {
            r.say(
                &key("name"),
                format!("{shown} names two entries; give each its own name"),
            );
        }
        if g.users.is_empty() && g.groups.is_empty() && !bad {
            r.say(
                &format!("policy.group[{i}]"),
                format!("entry {shown} has no members; list users = [..] or groups = [..]"),
            );
        }
        for (what, list) in [("users", &g.users), ("groups", &g.groups)] {
            let one = &what[..what.len() - 1];
            for member in list {
                if member.is_empty() || member.len() > 256 {
                    r.say(
                        &key(what),
                        format!("{member:?} is not a name (1-256 bytes)"),
                    );
                } else if let Some((_, _, other)) = seen
                    .iter()
                    .find(|(w, m, _)| *w == what && same_name(m, member))
                {
                    r.say(&key(what), format!("{one} {member:?} is also in entry {other} (names match regardless of case); a {one} belongs to one entry only"));
                } else {
                    seen.push((what, member.clone(), shown.clone()));
                }
            }
        }
        if let Some(max) = g.max.filter(|m| *m < g.reserved) {
            r.say(&key("max"), format!("{max} is below the entry's reserved {}: the members could never fill their reservation; raise max or lower reserved", g.reserved));
        }
        policy.groups.push(g);
    }
    SeatPolicy::new(
        policy.max_sessions_per_user,
        policy.at_user_limit,
        policy.groups,
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(policy: &str) -> Result<SeatPolicy, Vec<String>> {
        super::super::parse(&format!("device = \"D\"\n{policy}"), Path::new("/"))
            .map(|c| c.policy)
            .map_err(|ps| ps.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn no_policy_is_no_rule() {
        let p = parse("").unwrap();
        assert!(p.is_empty());
        assert_eq!(p.at_user_limit, AtUserLimit::Refuse);
    }

    #[test]
    fn a_policy_is_read_into_typed_values() {
        let p = parse(
            "[policy]\nmax_sessions_per_user = 2\nat_user_limit = \"replace_oldest\"\n\
             [[policy.group]]\nname = \"oncall\"\nusers = [\"alice\", \"bob\"]\nreserved = 2\n\
             [[policy.group]]\nname = \"contractors\"\ngroups = [\"ext\"]\nmax = 5\n\
             [[reconcile]]\nkind = \"ocserv\"\n",
        )
        .unwrap();
        assert_eq!(p.max_sessions_per_user, Some(2));
        assert_eq!(p.at_user_limit, AtUserLimit::ReplaceOldest);
        assert_eq!(p.groups[0].reserved, 2);
        assert_eq!(p.groups[1].max, Some(5));
        assert_eq!(p.reserved(), 2);
        assert_eq!(p.entry_of("alice", "ext"), Some(0), "the user's entry wins");
        assert_eq!(p.entry_of("carol", "ext"), Some(1));
        assert_eq!(p.entry_of("carol", ""), None);
        assert_eq!(p.entry_of("", ""), None);
    }

    #[test]
    fn each_contradiction_is_refused_by_key() {
        for (text, want) in [
            (
                "[policy]\nmax_sessions_per_user = 0\n",
                "policy.max_sessions_per_user (line 3): 0 would refuse every session",
            ),
            (
                "[policy]\nat_user_limit = \"kick\"\n",
                "policy.at_user_limit (line 3): \"kick\" is not one of: refuse, replace_oldest",
            ),
            (
                "[policy]\nmax_sessions_per_user = \"2\"\n",
                "policy.max_sessions_per_user (line 3): expected a whole number from 1 to 100000, got a string",
            ),
            (
                "[policy]\nlimit = 2\n",
                "policy.limit (line 3): unknown key \"limit\"; the keys here are max_sessions_per_user, at_user_limit, group",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = \"x\"\n",
                "policy.group[0].users: expected a list of names in quotes, got a string",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"x\"]\n[[policy.group]]\nname = \"b\"\nusers = [\"y\", \"x\"]\n",
                "policy.group[1].users: user \"x\" is also in entry \"a\" (names match regardless of case); a user belongs to one entry only",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"Alice\"]\n[[policy.group]]\nname = \"b\"\nusers = [\"alice\"]\n",
                "policy.group[1].users: user \"alice\" is also in entry \"a\" (names match regardless of case)",
            ),
            (
                "[[policy.group]]\nname = \"a\"\ngroups = [\"g\"]\n[[policy.group]]\nname = \"b\"\ngroups = [\"g\"]\n",
                "policy.group[1].groups: group \"g\" is also in entry \"a\"",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"x\"]\nreserved = 3\nmax = 2\n",
                "policy.group[0].max: 2 is below the entry's reserved 3",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nreserved = 1\n",
                "policy.group[0]: entry \"a\" has no members",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"x\"]\n[[policy.group]]\nname = \"a\"\nusers = [\"y\"]\n",
                "policy.group[1].name: \"a\" names two entries",
            ),
            (
                "[[policy.group]]\nusers = [\"x\"]\n",
                "policy.group[0].name: \"\" is not a name",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"x\"]\nreserved = 100001\n",
                "policy.group[0].reserved: expected a whole number from 0 to 100000, got 100001",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"\"]\n",
                "policy.group[0].users: \"\" is not a name",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"x\"]\nreserve = 1\n",
                "policy.group[0].reserve: unknown key \"reserve\"; the keys here are name, users, groups, reserved, max",
            ),
        ] {
            let problems = parse(text).unwrap_err();
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert!(problems[0].starts_with(want), "{text}: {problems:?}");
        }
    }

    #[test]
    fn the_same_name_as_user_and_group_is_no_contradiction() {
        // A user "ops" in one entry and a group "ops" in another are
        // different things: the user's entry wins for user ops.
        let p = parse(
            "[[policy.group]]\nname = \"a\"\nusers = [\"ops\"]\n[[policy.group]]\nname = \"b\"\ngroups = [\"ops\"]\n",
        )
        .unwrap();
        assert_eq!(p.entry_of("ops", "ops"), Some(0));
        assert_eq!(p.entry_of("eve", "ops"), Some(1));
    }
}
