//! TOML text into a serde shape with every wrong key reported at once, by
//! its name and in plain words ("expected a whole number, got a string"),
//! not serde's first error in Rust types ("expected u32"). A wrong key is
//! reported, set aside and the rest read again, so the keys that remain
//! are still validated. Pure.

use serde::de::DeserializeOwned;

use super::{problem, Problem};

/// What `read` gives: the shape, the problems, the keys left out, and the
/// top-level key set aside (read by hand by its own module).
pub type Read<T> = (T, Vec<Problem>, Vec<String>, Option<toml::Value>);

/// Reads `text` as `T`, but for the top-level key `aside`, which is taken
/// out and returned as it is. A syntax error ends the reading (one problem,
/// with its line); keys of the wrong type or unknown ones are left out of
/// the result and listed: the second value, with the keys left out (so
/// their defaults are not reported as missing), the third.
pub fn read<T: DeserializeOwned>(text: &str, aside: &str) -> Result<Read<T>, Vec<Problem>> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        let key = e.span().map_or("(file)".to_string(), |s| {
            format!("line {}", text[..s.start].matches('\n').count() + 1)
        });
        vec![problem(&key, e.message().to_string())]
    })?;
    let aside = table.remove(aside);
    let mut problems = Vec::new();
    let mut left_out = Vec::new();
    // Each round sets one key aside; a config has fewer keys than this.
    for _ in 0..1000 {
        let e = match T::deserialize(toml::Value::Table(table.clone())) {
            Ok(v) => return Ok((v, problems, left_out, aside)),
            Err(e) => e,
        };
        let message = e.message().to_string();
        let path = path_of(&e.to_string());
        let unknown = unknown_field(&message);
        let (parent, name) = match (&unknown, path.rsplit_once('.')) {
            (Some(field), _) => (path.clone(), field.clone()),
            (None, Some((parent, name))) => (parent.to_string(), name.to_string()),
            (None, None) => (String::new(), path.clone()),
        };
        let found = locate(text, &parent, &name);
        let parent = match found.and_then(|(index, _)| index) {
            Some(i) => format!("{parent}[{i}]"),
            None => parent,
        };
        let key = match parent.as_str() {
            "" => name.clone(),
            p => format!("{p}.{name}"),
        };
        let shown = match found {
            Some((_, line)) => format!("{key} (line {line})"),
            None => key.clone(),
        };
        problems.push(problem(&shown, plain(&message)));
        let parent = parent.split('[').next().unwrap_or_default().to_string();
        if name.is_empty() || !remove(&mut table, &parent, &name) {
            return Err(problems);
        }
        left_out.push(key);
    }
    Err(problems)
}

/// Where `name` is set under the table `parent` ("" for the top): its line
/// (from 1) and, under an array of tables (`[[parent]]`), the entry's index.
pub(super) fn locate(text: &str, parent: &str, name: &str) -> Option<(Option<usize>, usize)> {
    let mut section = String::new();
    let mut entries: Option<usize> = None;
    let mut seen = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(h) = line.strip_prefix("[[") {
            section = h.split("]]").next().unwrap_or_default().trim().to_string();
            entries = None;
            if section == parent {
                entries = Some(seen);
                seen += 1;
            }
            continue;
        }
        if let Some(h) = line.strip_prefix('[') {
            section = h.split(']').next().unwrap_or_default().trim().to_string();
            entries = None;
            continue;
        }
        let key = line.split('=').next().unwrap_or_default().trim();
        let key = key.trim_matches('"');
        if section == parent && key == name && line.contains('=') {
            return Some((entries, n + 1));
        }
    }
    None
}

/// The key path the value deserializer appends: "...\nin `a.b`".
fn path_of(display: &str) -> String {
    display
        .rsplit_once("in `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map_or(String::new(), |(p, _)| p.to_string())
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split_once('`')?.0.to_string())
}

/// Removes `name` from the table at `parent` (in every entry, when the
/// parent is an array of tables). False when nothing was there.
fn remove(table: &mut toml::Table, parent: &str, name: &str) -> bool {
    fn walk(value: &mut toml::Value, path: &[&str], name: &str) -> bool {
        match (value, path.split_first()) {
            (toml::Value::Array(items), _) => {
                // Every entry, not just the first that has it.
                let mut hit = false;
                for v in items {
                    hit |= walk(v, path, name);
                }
                hit
            }
            (toml::Value::Table(t), None) => t.remove(name).is_some(),
            (toml::Value::Table(t), Some((first, rest))) => {
                t.get_mut(*first).is_some_and(|v| walk(v, rest, name))
            }
            _ => false,
        }
    }
    let path: Vec<&str> = parent.split('.').filter(|p| !p.is_empty()).collect();
    let mut root = toml::Value::Table(std::mem::take(table));
    let hit = walk(&mut root, &path, name);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    hit
}

/// serde's message in the words of a config file.
fn plain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return match known.is_empty() {
            true => format!("unknown key {field:?}; remove it"),
            false => format!(
                "unknown key {field:?}; the keys here are {}",
                known.join(", ")
            ),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (got, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return format!("{got:?} is not one of: {}", known.join(", "));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((got, want)) = rest.split_once(", expected ") {
            return format!("expected {}, got {}", wanted(want), got_kind(got));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((got, want)) = rest.split_once(", expected ") {
            let got = got.split('`').nth(1).unwrap_or(got);
            return match range(want) {
                Some(range) => format!("{got} is out of range; expected a whole number {range}"),
                None => format!("{got} is not valid; expected {}", wanted(want)),
            };
        }
    }
    message.to_string()
}

fn wanted(rust: &str) -> String {
    match rust {
        t if range(t).is_some() => "a whole number".into(),
        "a boolean" => "true or false".into(),
        "a string" | "a borrowed string" => "a string (in quotes)".into(),
        "a sequence" => "a list [...]".into(),
        "path string" | "a path" => "a path (a string in quotes)".into(),
        t if t.starts_with("struct ") || t == "a map" => "a table".into(),
        t => t.to_string(),
    }
}

fn got_kind(serde: &str) -> String {
    let value = serde.split('`').nth(1);
    let kind = match serde.split([' ', '`']).next().unwrap_or(serde) {
        "integer" => "a whole number",
        "string" => "a string",
        "boolean" => "true/false",
        "floating" => "a decimal number",
        "sequence" => "a list",
        "map" => "a table",
        other => other,
    };
    match (value, serde.strip_prefix("string ")) {
        (_, Some(s)) => format!("a string ({s})"),
        (Some(v), _) => format!("{kind} ({v})"),
        _ => kind.to_string(),
    }
}

fn range(rust: &str) -> Option<&'static str> {
    Some(match rust {
        "u8" => "from 0 to 255",
        "u16" => "from 0 to 65535",
        "u32" => "from 0 to 4294967295",
        "u64" | "usize" => "from 0 to 18446744073709551615",
        "i32" => "from -2147483648 to 2147483647",
        "i64" => "from -9223372036854775808 to 9223372036854775807",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shape {
        n: Option<u32>,
        s: Option<String>,
        #[serde(default)]
        sub: Sub,
        #[serde(default)]
        list: Vec<Sub>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sub {
        b: Option<bool>,
        names: Option<Vec<String>>,
    }

    #[test]
    fn every_wrong_key_in_plain_words() {
        let text =
            "n = \"12\"\ns = 3\n[sub]\nb = 1\nnames = [1]\ntypo = 2\n[[list]]\nb = \"yes\"\n";
        let (shape, problems, left_out, _) = read::<Shape>(text, "").unwrap();
        let got: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            got,
            [
                "list[0].b (line 8): expected true or false, got a string (\"yes\")",
                "n (line 1): expected a whole number, got a string (\"12\")",
                "s (line 2): expected a string (in quotes), got a whole number (3)",
                "sub.b (line 4): expected true or false, got a whole number (1)",
                "sub.names (line 5): expected a string (in quotes), got a whole number (1)",
                "sub.typo (line 6): unknown key \"typo\"; the keys here are b, names",
            ]
        );
        assert_eq!(left_out.len(), 6);
        assert!(shape.n.is_none() && shape.sub.b.is_none());
    }

    #[test]
    fn out_of_range_and_syntax() {
        let problems = read::<Shape>("n = -1\n", "").unwrap().1;
        assert_eq!(
            problems[0].to_string(),
            "n (line 1): -1 is out of range; expected a whole number from 0 to 4294967295"
        );
        let problems = read::<Shape>("n = \n", "").err().unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "line 1");
    }
}
