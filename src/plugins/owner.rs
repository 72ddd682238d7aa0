//! Who owns a plugin file (SPEC §7): its top-level `__ID__ = "<uuid>"`, read from the source
//! without running it, because a tenant's code must never execute in the server's interpreter.
//!
//! Only a plain string literal assigned once at the top level counts. The scanner follows just
//! enough of Python's lexical rules to know where a top-level statement begins: comments,
//! string literals (single, triple-quoted, with prefixes), brackets and backslash continuations.
//! Anything else that assigns `__ID__` at the top level (`__ID__ = f()`, `__ID__ = x = "…"`, two
//! assignments) is refused, so a file can never be taken for the admin's by mistake.

/// What a file's source says about its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// No top-level `__ID__`.
    Nothing,
    /// `__ID__ = "<value>"`, the literal's text as written.
    Literal(String),
    /// A top-level `__ID__` that is not one plain string literal: a load error of the file.
    Invalid(String),
}

/// Reads the owner declaration of `source`.
pub fn declared(source: &[u8]) -> Declared {
    let text = String::from_utf8_lossy(source);
    let mut found: Option<Declared> = None;
    for statement in top_level_statements(&text) {
        let Some(rest) = statement.strip_prefix("__ID__") else {
            continue;
        };
        if rest
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue; // `__ID___x = …`: another name
        }
        let rest = rest.trim_start();
        // `__ID__.x = …`, `__ID__[0]`, a bare `__ID__` expression: not an assignment of it.
        if !(rest.starts_with('=') && !rest.starts_with("==") || rest.starts_with(':')) {
            continue;
        }
        let verdict = literal_assignment(rest);
        if found.is_some() {
            return Declared::Invalid("`__ID__` is assigned more than once".into());
        }
        found = Some(verdict);
    }
    found.unwrap_or(Declared::Nothing)
}

/// `= "literal"` (or `: str = "literal"`), with an optional trailing comment.
fn literal_assignment(rest: &str) -> Declared {
    let invalid = || Declared::Invalid("`__ID__` must be assigned one plain string literal".into());
    let value = match rest.strip_prefix(':') {
        Some(annotated) => match annotated.split_once('=') {
            Some((_, v)) => v,
            None => return invalid(),
        },
        None => &rest[1..],
    };
    let value = value.trim_start();
    let value = value
        .strip_prefix(['r', 'R', 'u', 'U'])
        .filter(|v| v.starts_with(['"', '\'']))
        .unwrap_or(value);
    let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        return invalid();
    };
    let body = &value[1..];
    let Some(end) = body.find(quote) else {
        return invalid();
    };
    let literal = &body[..end];
    let after = body[end + 1..].trim();
    if literal.contains('\\')
        || literal.starts_with(quote)
        || !(after.is_empty() || after.starts_with('#'))
    {
        return invalid();
    }
    Declared::Literal(literal.to_string())
}

/// The text of each statement that begins at column 0 outside any string or bracket, from its
/// first character to the end of its physical line.
fn top_level_statements(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut depth: usize = 0;
    let mut line_start = true;
    let mut continued = false;
    while i < bytes.len() {
        let c = bytes[i];
        if line_start {
            line_start = false;
            if depth == 0 && !continued && !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'#') {
                let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                out.push(&text[i..end]);
            }
            continued = false;
        }
        match c {
            b'\n' => {
                line_start = true;
                i += 1;
            }
            b'#' => {
                i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
            }
            b'\\' => {
                // A continuation: the next line is part of this statement.
                if bytes.get(i + 1) == Some(&b'\n') {
                    continued = true;
                }
                i += 1;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' | b'\'' => i = skip_string(bytes, i),
            _ => i += 1,
        }
    }
    out
}

/// The index just past the string literal starting with the quote at `at`.
fn skip_string(bytes: &[u8], at: usize) -> usize {
    let quote = bytes[at];
    let triple = bytes.get(at + 1) == Some(&quote) && bytes.get(at + 2) == Some(&quote);
    let mut i = if triple { at + 3 } else { at + 1 };
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'\n' if !triple => return i,
            c if c == quote => {
                if !triple {
                    return i + 1;
                }
                if bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote) {
                    return i + 3;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "0d6b2e3a-8c2f-4d8e-9a51-3b7c1f2e4a10";

    fn lit(s: &str) -> Declared {
        Declared::Literal(s.to_string())
    }

    #[test]
    fn plain_literals_in_any_quote_count() {
        assert_eq!(declared(format!("__ID__ = \"{U}\"\n").as_bytes()), lit(U));
        assert_eq!(
            declared(format!("__ID__='{U}'  # owner").as_bytes()),
            lit(U)
        );
        assert_eq!(
            declared(format!("__ID__: str = \"{U}\"").as_bytes()),
            lit(U)
        );
        assert_eq!(
            declared(format!("x = 1\n__ID__ = r\"{U}\"\ny = 2").as_bytes()),
            lit(U)
        );
    }

    #[test]
    fn no_declaration_is_nothing() {
        assert_eq!(declared(b"x = 1\n"), Declared::Nothing);
        assert_eq!(declared(b""), Declared::Nothing);
        assert_eq!(declared(b"__ID___other = 'x'\n"), Declared::Nothing);
        assert_eq!(declared(b"if __ID__ == 'x': pass\n"), Declared::Nothing);
    }

    #[test]
    fn text_inside_strings_comments_and_blocks_is_not_a_statement() {
        let doc = format!("\"\"\"\n__ID__ = \"{U}\"\n\"\"\"\nx = 1\n");
        assert_eq!(declared(doc.as_bytes()), Declared::Nothing);
        let single = format!("s = '''\n__ID__ = \"{U}\"'''\n");
        assert_eq!(declared(single.as_bytes()), Declared::Nothing);
        let comment = format!("# __ID__ = \"{U}\"\n");
        assert_eq!(declared(comment.as_bytes()), Declared::Nothing);
        let call = format!("f(\n__ID__ = \"{U}\")\n");
        assert_eq!(declared(call.as_bytes()), Declared::Nothing);
        let nested = format!("def f():\n    __ID__ = \"{U}\"\n");
        assert_eq!(declared(nested.as_bytes()), Declared::Nothing);
        let continued = "x = 1 + \\\n__ID__\n".to_string();
        assert_eq!(declared(continued.as_bytes()), Declared::Nothing);
        let escaped = format!("s = 'it\\'s'\n__ID__ = \"{U}\"\n");
        assert_eq!(declared(escaped.as_bytes()), lit(U));
    }

    #[test]
    fn anything_but_one_literal_is_refused() {
        for bad in [
            "__ID__ = make_id()\n",
            "__ID__ = x = 'a'\n",
            "__ID__ = 'a' + 'b'\n",
            "__ID__ = f'{x}'\n",
            "__ID__ = 'a\\x41'\n",
            "__ID__ = 'a'\n__ID__ = 'b'\n",
            "__ID__ = \"\"\"a\"\"\"\n",
            "__ID__ : str\n",
        ] {
            assert!(
                matches!(declared(bad.as_bytes()), Declared::Invalid(_)),
                "{bad:?}"
            );
        }
    }
}

/// Which files one plugin registry loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `MULTI_TENANT=False`: every file, `__ID__` only informational.
    All,
    /// The admin's modules: no `__ID__`, or `__ID__` equal to `ADMIN_ID`.
    Admin(Option<uuid::Uuid>),
    /// One tenant's modules: `__ID__` equal to its uuid.
    Tenant(uuid::Uuid),
}

/// What a scope does with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Loaded by this registry.
    Load,
    /// Another owner's file: the admin's registry lists it (as unowned until its tenant is
    /// registered), a tenant's registry ignores it.
    Foreign(String),
    /// Not this registry's business.
    Ignore,
    /// A declaration that cannot be read: a load error of the file.
    Invalid(String),
}

impl Scope {
    pub fn verdict(self, declared: &Declared) -> Verdict {
        let named = |s: &str| uuid::Uuid::parse_str(s).ok();
        match (self, declared) {
            (Scope::All, _) => Verdict::Load,
            (Scope::Admin(_), Declared::Nothing) => Verdict::Load,
            (Scope::Admin(admin), Declared::Literal(s)) => match named(s) {
                Some(u) if Some(u) == admin => Verdict::Load,
                _ => Verdict::Foreign(s.clone()),
            },
            (Scope::Admin(_), Declared::Invalid(why)) => Verdict::Invalid(why.clone()),
            (Scope::Tenant(t), Declared::Literal(s)) if named(s) == Some(t) => Verdict::Load,
            (Scope::Tenant(_), _) => Verdict::Ignore,
        }
    }

    /// Whether the executor needs the files' bytes (a sandbox cannot read the folders).
    pub fn sends_sources(self) -> bool {
        matches!(self, Scope::Tenant(_))
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    #[test]
    fn each_scope_takes_its_own_files() {
        let admin = uuid::Uuid::new_v4();
        let tenant = uuid::Uuid::new_v4();
        let mine = Declared::Literal(tenant.to_string());
        let admins = Declared::Literal(admin.to_string().to_uppercase());
        assert_eq!(Scope::All.verdict(&mine), Verdict::Load);
        assert_eq!(
            Scope::Admin(Some(admin)).verdict(&Declared::Nothing),
            Verdict::Load
        );
        assert_eq!(Scope::Admin(Some(admin)).verdict(&admins), Verdict::Load);
        assert_eq!(
            Scope::Admin(Some(admin)).verdict(&mine),
            Verdict::Foreign(tenant.to_string())
        );
        assert_eq!(Scope::Tenant(tenant).verdict(&mine), Verdict::Load);
        assert_eq!(
            Scope::Tenant(tenant).verdict(&Declared::Nothing),
            Verdict::Ignore
        );
        assert_eq!(Scope::Tenant(tenant).verdict(&admins), Verdict::Ignore);
        let bad = Declared::Invalid("x".into());
        assert!(matches!(
            Scope::Admin(None).verdict(&bad),
            Verdict::Invalid(_)
        ));
        assert_eq!(Scope::Tenant(tenant).verdict(&bad), Verdict::Ignore);
    }
}
