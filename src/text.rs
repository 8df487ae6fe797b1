//! Untrusted text (user names, session keys, addresses from a hook or a
//! peer) made safe for a log line or a status table: control characters
//! escaped, so nothing can forge a line or move a terminal's cursor, and
//! the length bounded. Pure.

use std::fmt::Write;

/// The most characters of one field shown.
pub const MAX_SHOWN: usize = 128;

/// `s` with control characters (C0, DEL, C1 and the Unicode line and
/// paragraph separators) and backslashes escaped, cut at `MAX_SHOWN`
/// characters with an ellipsis.
pub fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_SHOWN + 8));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_SHOWN {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_length_bounded() {
        let cases = [
            ("alice", "alice"),
            ("a\nFAKE LOG LINE", "a\\nFAKE LOG LINE"),
            ("\x1b[2J\x1b[Hx", "\\u{1b}[2J\\u{1b}[Hx"),
            ("cr\rlf", "cr\\rlf"),
            ("back\\slash", "back\\\\slash"),
            ("del\x7f c1\u{85}", "del\\u{7f} c1\\u{85}"),
            ("sep\u{2028}", "sep\\u{2028}"),
            ("ünïcödé 名前", "ünïcödé 名前"),
        ];
        for (input, want) in cases {
            assert_eq!(shown(input), want, "{input:?}");
        }
        let long = "x".repeat(1000);
        assert_eq!(shown(&long).chars().count(), MAX_SHOWN + 1);
        assert!(shown(&long).ends_with('…'));
    }
}
