//! Just enough of Rust's lexical structure for the tidy checks: code with comments and the
//! contents of literals blanked (so `"http://x"` hides nothing and `// tokio::` is not a use),
//! and the paths `use` declarations bring in, groups expanded (`use std::{fs, io}` is
//! `std::fs` and `std::io`).

/// `text` with every comment and the contents of every string and char literal replaced by
/// spaces; line breaks are kept, so line numbers stay true.
pub fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br#"…"#: the prefix is code, the contents are not.
            let open = chars[i..].iter().position(|&c| c == '"').expect("a raw string has a quote") + i;
            out.extend(&chars[i..=open]);
            i = open + 1;
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            while i < chars.len() && !chars[i..].starts_with(&close) {
                out.push(blank(chars[i]));
                i += 1;
            }
            out.extend(&close);
            i += close.len();
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    out.push(' ');
                    i += 1;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if c == '\'' && (i == 0 || !ident(chars[i - 1])) && char_literal(&chars, i).is_some() {
            let end = char_literal(&chars, i).expect("checked");
            out.push('\'');
            out.extend(std::iter::repeat_n(' ', end - i - 1));
            out.push('\'');
            i = end + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The number of `#`s of a raw string starting at `i` (`r"`, `r#"`, `br"`, …), if one does.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    if i > 0 && ident(chars[i - 1]) {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
    (chars.get(j + hashes) == Some(&'"')).then_some(hashes)
}

/// Where the char literal opening at `i` closes (`'a'`, `'\n'`, `'\u{1F600}'`), or `None`
/// for a lifetime (`'a`).
fn char_literal(chars: &[char], i: usize) -> Option<usize> {
    match chars.get(i + 1)? {
        '\\' => chars[i + 2..].iter().position(|&c| c == '\'').map(|p| p + i + 2),
        _ => (chars.get(i + 2) == Some(&'\'')).then_some(i + 2),
    }
}

/// Every path the `use` declarations of `code` (see [`code_of`]) bring in, with the line
/// (from 1) each declaration starts on; groups are expanded and `self` names its parent.
pub fn use_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(found) = code[i..].find("use ") {
        let start = i + found;
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let boundary = before.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_'));
        let Some(end) = code[start..].find(';').map(|e| start + e) else { break };
        if boundary {
            let line = code[..start].matches('\n').count() + 1;
            for path in expand(&tidy_tree(&code[start + 4..end])) {
                out.push((line, path));
            }
        }
        i = start + 4;
    }
    out
}

/// A use tree with no whitespace but the one before and after each `as`.
fn tidy_tree(tree: &str) -> String {
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut out = String::new();
    for (k, word) in words.iter().enumerate() {
        if *word == "as" || words.get(k.wrapping_sub(1)) == Some(&"as") {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `a::{b,c::{d,self}}` as `a::b`, `a::c::d`, `a::c`; an `as` rename is dropped.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        return vec![path.trim_end_matches("::self").to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[from..k]);
                from = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[from..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand(p)
                .into_iter()
                .map(|e| if e == "self" { prefix.trim_end_matches("::").to_string() } else { format!("{prefix}{e}") })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_literals_hide_nothing_and_show_nothing() {
        let code = code_of("let u = \"http://x\"; tokio::spawn(f); // std::fs\n/* std::fs */ let c = '\"'; f::<'a>()");
        assert!(code.contains("tokio::spawn(f)"), "{code}");
        assert!(!code.contains("std::fs") && !code.contains("http"), "{code}");
        assert!(code.contains("f::<'a>()"), "a lifetime is code: {code}");
        let raw = code_of("let s = r#\"SystemTime::now() \"quoted\" \"#; SystemTime::now()");
        assert_eq!(raw.matches("SystemTime::now").count(), 1, "{raw}");
        assert_eq!(code_of("a\n\"b\nc\"\nd").lines().count(), 4, "lines stay where they were");
    }

    #[test]
    fn groups_are_expanded() {
        let paths: Vec<String> = use_paths(
            "use std::{fs, io::{self, Read}};\nuse crate::{app, routes as r, alias};\nfn f() {}\npub use super::super::x;",
        )
        .into_iter()
        .map(|(_, p)| p)
        .collect();
        assert_eq!(
            paths,
            ["std::fs", "std::io", "std::io::Read", "crate::app", "crate::routes", "crate::alias", "super::super::x"]
        );
        assert_eq!(use_paths("fn reuse(x: u8) {}\nuse a::b;")[0], (2, "a::b".to_string()));
    }
}
