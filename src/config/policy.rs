//! `[policy]`: who may hold which seats. A per-user session limit and
//! `[[policy.group]]` entries that reserve seats for named users and groups
//! or cap them. The raw serde shape and its validation into `SeatPolicy`, with
//! every contradiction refused by key (pure). docs/policy.md explains the rules.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{problem, Problem};

/// The most seats one entry may reserve or be capped at (as many as the
/// largest license may have).
pub const MAX_SEATS: u32 = 100_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    max_sessions_per_user: Option<u32>,
    at_user_limit: Option<AtUserLimit>,
    #[serde(default)]
    group: Vec<RawGroup>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Option<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    reserved: Option<u32>,
    max: Option<u32>,
}

/// What a new session of a user at `max_sessions_per_user` gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AtUserLimit {
    /// Refused (`user_limit`); the user's sessions keep their seats.
    #[default]
    Refuse,
    /// Admitted in the seat of the user's oldest session, which is
    /// disconnected through its VPN server (Cisco ASA's behaviour).
    ReplaceOldest,
}

/// The validated `[policy]`. The default: no rule at all. Made by `new`,
/// which indexes the entries' names: admissions look every session up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeatPolicy {
    /// Sessions one user name may hold across every VPN server (None: no
    /// limit). Sessions with no user name are never limited.
    pub max_sessions_per_user: Option<u32>,
    pub at_user_limit: AtUserLimit,
    pub groups: Vec<Group>,
    /// The entry naming each user, and each group.
    by_user: HashMap<String, usize>,
    by_group: HashMap<String, usize>,
}

/// One `[[policy.group]]`: its members are the sessions whose user name is
/// in `users`, or else whose server-reported group is in `groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    /// Seats nobody else may take (0: none).
    pub reserved: u32,
    /// The most seats the members may hold together (None: the cap).
    pub max: Option<u32>,
}

impl SeatPolicy {
    pub fn new(
        max_sessions_per_user: Option<u32>,
        at_user_limit: AtUserLimit,
        groups: Vec<Group>,
    ) -> SeatPolicy {
        let (mut by_user, mut by_group) = (HashMap::new(), HashMap::new());
        for (i, g) in groups.iter().enumerate() {
            for u in &g.users {
                by_user.entry(u.clone()).or_insert(i);
            }
            for n in &g.groups {
                by_group.entry(n.clone()).or_insert(i);
            }
        }
        SeatPolicy {
            max_sessions_per_user,
            at_user_limit,
            groups,
            by_user,
            by_group,
        }
    }

    /// True when no rule is set: admission is the cap alone.
    pub fn is_empty(&self) -> bool {
        self.max_sessions_per_user.is_none() && self.groups.is_empty()
    }

    /// The entry a session of `user` reporting `group` belongs to: the one
    /// naming the user, else the one naming the group. Empty names are in none.
    pub fn entry_of(&self, user: &str, group: &str) -> Option<usize> {
        let find = |map: &HashMap<String, usize>, name: &str| {
            (!name.is_empty()).then(|| map.get(name)).flatten().copied()
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

/// Validates `[policy]`, adding each contradiction to `problems`.
pub(super) fn validate(raw: RawPolicy, problems: &mut Vec<Problem>) -> SeatPolicy {
    if raw.max_sessions_per_user == Some(0) {
        problems.push(problem(
            "policy.max_sessions_per_user",
            "0 would refuse every session; set 1 or more, or remove the key for no limit",
        ));
    }
    let mut groups: Vec<Group> = Vec::new();
    // Every name seen, with the entry that named it first.
    let mut seen: Vec<(&'static str, String, String)> = Vec::new();
    for (i, g) in raw.group.into_iter().enumerate() {
        let key = |k: &str| format!("policy.group[{i}].{k}");
        let name = g.name.unwrap_or_default();
        let shown = format!("{name:?}");
        if !(1..=64).contains(&name.len())
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(problem(
                &key("name"),
                format!("{shown} is not a name; use letters, digits, '-' and '_' (1-64 characters), e.g. name = \"oncall\""),
            ));
        }
        if groups.iter().any(|o| o.name == name) {
            problems.push(problem(
                &key("name"),
                format!("{shown} names two entries; give each its own name"),
            ));
        }
        if g.users.is_empty() && g.groups.is_empty() {
            problems.push(problem(
                &format!("policy.group[{i}]"),
                format!("entry {shown} has no members; list users = [..] or groups = [..]"),
            ));
        }
        for (what, list) in [("users", &g.users), ("groups", &g.groups)] {
            for member in list {
                if member.is_empty() || member.len() > 256 {
                    problems.push(problem(
                        &key(what),
                        format!("{member:?} is not a name (1-256 bytes)"),
                    ));
                } else if let Some((_, _, other)) =
                    seen.iter().find(|(w, m, _)| *w == what && m == member)
                {
                    let one = &what[..what.len() - 1];
                    problems.push(problem(
                        &key(what),
                        format!("{one} {member:?} is also in entry {other}; a {one} belongs to one entry only"),
                    ));
                } else {
                    seen.push((what, member.clone(), shown.clone()));
                }
            }
        }
        let reserved = g.reserved.unwrap_or(0);
        for (k, n) in [("reserved", Some(reserved)), ("max", g.max)] {
            if n.is_some_and(|n| n > MAX_SEATS) {
                problems.push(problem(
                    &key(k),
                    format!(
                        "{} seats is more than any gateway has; use at most {MAX_SEATS}",
                        n.unwrap_or(0)
                    ),
                ));
            }
        }
        if let Some(max) = g.max.filter(|m| *m < reserved) {
            problems.push(problem(
                &key("max"),
                format!("{max} is below the entry's reserved {reserved}: the members could never fill their reservation; raise max or lower reserved"),
            ));
        }
        groups.push(Group {
            name,
            users: g.users,
            groups: g.groups,
            reserved,
            max: g.max,
        });
    }
    SeatPolicy::new(
        raw.max_sessions_per_user,
        raw.at_user_limit.unwrap_or_default(),
        groups,
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
             [[policy.group]]\nname = \"contractors\"\ngroups = [\"ext\"]\nmax = 5\n",
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
                "policy.max_sessions_per_user: 0 would refuse every session",
            ),
            (
                "[policy]\nat_user_limit = \"kick\"\n",
                "policy.at_user_limit (line 3): \"kick\" is not one of: refuse, replace_oldest",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"x\"]\n[[policy.group]]\nname = \"b\"\nusers = [\"y\", \"x\"]\n",
                "policy.group[1].users: user \"x\" is also in entry \"a\"; a user belongs to one entry only",
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
                "policy.group[0].reserved: 100001 seats is more than any gateway has",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"\"]\n",
                "policy.group[0].users: \"\" is not a name",
            ),
            (
                "[[policy.group]]\nname = \"a\"\nusers = [\"x\"]\nreserve = 1\n",
                "policy.group[0].reserve (line 5): unknown key \"reserve\"",
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
