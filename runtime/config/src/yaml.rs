//! YAML plumbing for the loader: splitting a file into documents (keeping line numbers),
//! turning serde_yaml errors into field paths, and a tolerant outline of block-style YAML
//! that maps a field path such as `spec.http[1].route[0].weight` back to its line, so
//! validation errors can point at the line that holds the offending field.

/// One document of a multi-document YAML text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlDocument {
    /// 1-based line in the whole text where the document's first line is.
    pub first_line: usize,
    /// The document's text; its line 1 is `first_line` of the whole text.
    pub text: String,
}

impl YamlDocument {
    /// Whether the document holds nothing but blank lines and comments.
    pub fn is_blank(&self) -> bool {
        self.text.lines().all(|l| {
            let t = l.trim_start();
            t.is_empty() || t.starts_with('#')
        })
    }

    /// The absolute line of the document's last non-blank, non-comment line.
    pub fn end_line(&self) -> usize {
        let lines: Vec<&str> = self.text.lines().collect();
        lines
            .iter()
            .rposition(|l| {
                let t = l.trim_start();
                !t.is_empty() && !t.starts_with('#')
            })
            .map_or(self.first_line, |i| self.first_line + i)
    }

    /// The absolute line of the document's first non-blank, non-comment line.
    pub fn start_line(&self) -> usize {
        self.text
            .lines()
            .position(|l| {
                let t = l.trim_start();
                !t.is_empty() && !t.starts_with('#')
            })
            .map_or(self.first_line, |i| self.first_line + i)
    }
}

/// Splits YAML text at `---` document markers (at the start of a line). `...` ends a
/// document; `%` directives are dropped. Blank documents are kept, so callers see every
/// document Kubernetes tooling would (and skip the blank ones).
pub fn split_documents(text: &str) -> Vec<YamlDocument> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    let mut ended = false;
    let body = text.strip_suffix('\n').unwrap_or(text);
    for (i, raw_line) in body.split('\n').enumerate() {
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let lineno = i + 1;
        let is_marker = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.starts_with("---#");
        if is_marker {
            docs.push(YamlDocument {
                first_line,
                text: std::mem::take(&mut current),
            });
            first_line = lineno;
            ended = false;
            // Content after the marker stays on its line; blank the marker itself.
            current.push_str(&" ".repeat(3));
            current.push_str(&line[3..]);
            current.push('\n');
            continue;
        }
        if line == "..." || line.starts_with("... ") {
            ended = true;
        }
        if ended || line.starts_with('%') {
            current.push('\n');
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push(YamlDocument {
        first_line,
        text: current,
    });
    docs
}

/// One segment of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A kubectl-style field path (`spec.http[1].route[0].weight`), built while validating.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn root(key: &str) -> FieldPath {
        FieldPath(vec![Seg::Key(key.to_string())])
    }

    pub fn key(&self, key: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }

    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A serde_yaml error split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerdeFailure {
    pub line: Option<usize>,
    /// For syntax errors, where the construct being parsed started (libyaml's context).
    pub context_line: Option<usize>,
    pub path: Option<String>,
    pub message: String,
}

/// Splits a serde_yaml error into line, field path and message. serde_yaml renders these
/// as `path: message at line L column C`; the location is removed from the message (the
/// caller prints the line) and the path is kept apart. For an unknown field the path is
/// extended with the field's name, kubectl-style.
pub fn serde_failure(err: &serde_yaml::Error) -> SerdeFailure {
    let mut text = err.to_string();
    let line = err.location().map(|l| l.line());
    let context_line = text
        .split_once(", while ")
        .and_then(|(_, ctx)| ctx.split_once(" at line "))
        .and_then(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        });
    // Positions are reported through `line`; drop them (and libyaml's context marks).
    while let Some(i) = text.find(" at line ") {
        let rest = &text[i + " at line ".len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let Some(after) = rest[digits..].strip_prefix(" column ") else {
            break;
        };
        let col_digits = after.chars().take_while(char::is_ascii_digit).count();
        let end = i + " at line ".len() + digits + " column ".len() + col_digits;
        text.replace_range(i..end, "");
    }
    let mut path = None;
    if let Some((head, tail)) = text.split_once(": ") {
        let looks_like_path =
            !head.is_empty() && !head.contains(' ') && !head.contains('`') && !head.contains('"');
        if looks_like_path {
            path = Some(head.to_string());
            text = tail.to_string();
        }
    }
    if let Some(rest) = text.strip_prefix("unknown field `")
        && let Some((name, _)) = rest.split_once('`')
    {
        path = Some(match path {
            Some(p) => format!("{p}.{name}"),
            None => name.to_string(),
        });
    }
    let message = friendlier(&text);
    SerdeFailure {
        line,
        context_line,
        path,
        message,
    }
}

/// serde's wording names Rust types; say what YAML would have.
fn friendlier(msg: &str) -> String {
    msg.replace("unit value", "null")
        .replace("expected i32", "expected a 32-bit integer")
        .replace("expected u32", "expected a non-negative 32-bit integer")
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
}

/// Works around one difference between libyaml (behind serde_yaml) and the Go YAML
/// parser Kubernetes uses: in a flow collection Go accepts a plain scalar with a `:`
/// before a flow indicator (`[1.2.3.4, 2001:db8::]`), libyaml rejects it with "found
/// unexpected ':'". Given such an error's position (1-based line, and the column where
/// the scalar starts), this returns the text with that scalar double-quoted, or `None`
/// when the error is of another kind or the scalar cannot be quoted safely.
pub fn quote_flow_scalar(text: &str, err: &serde_yaml::Error) -> Option<String> {
    if !err.to_string().contains("found unexpected ':'") {
        return None;
    }
    let msg = err.to_string();
    let (_, context) = msg.split_once("while scanning a plain scalar at line ")?;
    let (line_no, rest) = context.split_once(" column ")?;
    let line_no: usize = line_no.parse().ok()?;
    let column: usize = rest
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let line = lines.get_mut(line_no.checked_sub(1)?)?;
    let start = line
        .char_indices()
        .nth(column.checked_sub(1)?)
        .map(|(i, _)| i)?;
    let tail = &line[start..];
    let mut end = tail.len();
    for (i, c) in tail.char_indices() {
        let next = tail[i + c.len_utf8()..].chars().next();
        if matches!(c, ',' | '[' | ']' | '{' | '}')
            || (c == ':' && next == Some(' '))
            || (c == ' ' && next == Some('#'))
        {
            end = i;
            break;
        }
    }
    let scalar = tail[..end].trim_end();
    if !scalar.contains(':') || scalar.contains('"') || scalar.contains('\\') {
        return None;
    }
    let quoted = format!(
        "{}\"{scalar}\"{}",
        &line[..start],
        &line[start + scalar.len()..]
    );
    *line = quoted;
    Some(lines.join("\n"))
}

/// A tolerant outline of a block-style YAML document: enough structure to find the line
/// of a field path. Flow collections and odd constructs are leaves; lookups stop at the
/// deepest node found.
#[derive(Debug, Default)]
pub struct Outline {
    root: Option<Node>,
    start_line: usize,
}

#[derive(Debug)]
struct Node {
    line: usize,
    value: Option<String>,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Leaf,
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
}

#[derive(Debug)]
enum Entry {
    Dash {
        indent: usize,
        line: usize,
    },
    Key {
        indent: usize,
        line: usize,
        key: String,
        value: String,
    },
    Scalar {
        indent: usize,
        line: usize,
        text: String,
    },
}

impl Entry {
    fn indent(&self) -> usize {
        match self {
            Entry::Dash { indent, .. }
            | Entry::Key { indent, .. }
            | Entry::Scalar { indent, .. } => *indent,
        }
    }
    fn line(&self) -> usize {
        match self {
            Entry::Dash { line, .. } | Entry::Key { line, .. } | Entry::Scalar { line, .. } => {
                *line
            }
        }
    }
}

impl Outline {
    /// Builds the outline of a document whose first line is `first_line` in its file.
    pub fn parse(doc: &YamlDocument) -> Outline {
        let entries = tokenize(&doc.text, doc.first_line);
        let mut i = 0;
        let root = parse_block(&entries, &mut i, 0);
        Outline {
            root,
            start_line: doc.start_line(),
        }
    }

    /// The line of the deepest node along `path` (the document's first line if none).
    pub fn line_of(&self, path: &[Seg]) -> usize {
        let mut line = self.start_line;
        let mut node = self.root.as_ref();
        for seg in path {
            let Some(n) = node else { break };
            let next = match (&n.body, seg) {
                (Body::Map(entries), Seg::Key(k)) => {
                    entries.iter().find(|(key, _)| key == k).map(|(_, v)| v)
                }
                (Body::Seq(items), Seg::Index(i)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(child) => {
                    line = child.line;
                    node = Some(child);
                }
                None => break,
            }
        }
        line
    }

    /// The scalar text at `path`, when the path leads to a plain or quoted scalar.
    pub fn scalar(&self, path: &[Seg]) -> Option<String> {
        let mut node = self.root.as_ref()?;
        for seg in path {
            node = match (&node.body, seg) {
                (Body::Map(entries), Seg::Key(k)) => {
                    entries.iter().find(|(key, _)| key == k).map(|(_, v)| v)?
                }
                (Body::Seq(items), Seg::Index(i)) => items.get(*i)?,
                _ => return None,
            };
        }
        node.value.as_deref().map(unquote).filter(|v| !v.is_empty())
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// Strips a trailing ` #comment` that is not inside quotes.
fn strip_comment(s: &str) -> &str {
    let mut quote = None;
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') => {
                return s[..i].trim_end();
            }
            None => {}
        }
    }
    s.trim_end()
}

/// Splits `key: value` (the key possibly quoted). `None` when the text is not a mapping
/// entry.
fn split_key(text: &str) -> Option<(String, String)> {
    let first = text.as_bytes().first().copied()?;
    if first == b'{' || first == b'[' {
        return None;
    }
    if first == b'"' || first == b'\'' {
        let mut end = None;
        let bytes = text.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            if bytes[i] == b'\\' && first == b'"' {
                i += 2;
                continue;
            }
            if bytes[i] == first {
                if first == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                    i += 2;
                    continue;
                }
                end = Some(i);
                break;
            }
            i += 1;
        }
        let end = end?;
        let rest = text[end + 1..].trim_start();
        let value = rest.strip_prefix(':')?;
        if !(value.is_empty() || value.starts_with(' ') || value.starts_with('\t')) {
            return None;
        }
        return Some((
            text[1..end].to_string(),
            strip_comment(value.trim()).to_string(),
        ));
    }
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b':'
            && (i + 1 == bytes.len() || bytes[i + 1] == b' ' || bytes[i + 1] == b'\t')
        {
            let key = text[..i].trim_end().to_string();
            if key.starts_with('#') {
                return None;
            }
            return Some((key, strip_comment(text[i + 1..].trim()).to_string()));
        }
        if bytes[i] == b' ' && bytes.get(i + 1) == Some(&b'#') {
            return None;
        }
    }
    None
}

fn is_block_scalar_indicator(v: &str) -> bool {
    let v = v.trim();
    let mut chars = v.chars();
    matches!(chars.next(), Some('|') | Some('>'))
        && chars.all(|c| c == '-' || c == '+' || c.is_ascii_digit())
}

fn tokenize(text: &str, first_line: usize) -> Vec<Entry> {
    let mut out = Vec::new();
    // Lines more indented than this belong to a block scalar and are skipped.
    let mut block_scalar_parent: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let lineno = first_line + i;
        let mut indent = line.len() - line.trim_start_matches(' ').len();
        let mut rest = line[indent..].trim_end();
        if rest.is_empty() {
            continue;
        }
        if let Some(parent) = block_scalar_parent {
            if indent > parent {
                continue;
            }
            block_scalar_parent = None;
        }
        if rest.starts_with('#') {
            continue;
        }
        let mut last_dash = None;
        loop {
            if rest == "-" || rest.starts_with("- ") || rest.starts_with("-\t") {
                out.push(Entry::Dash {
                    indent,
                    line: lineno,
                });
                last_dash = Some(indent);
                let after = &rest[1..];
                let trimmed = after.trim_start();
                indent += 1 + (after.len() - trimmed.len());
                rest = trimmed;
                if rest.is_empty() || rest.starts_with('#') {
                    break;
                }
                continue;
            }
            match split_key(rest) {
                Some((key, value)) => {
                    if is_block_scalar_indicator(&value) {
                        block_scalar_parent = Some(indent);
                    }
                    out.push(Entry::Key {
                        indent,
                        line: lineno,
                        key,
                        value,
                    });
                }
                None => {
                    if is_block_scalar_indicator(strip_comment(rest)) {
                        block_scalar_parent = Some(last_dash.unwrap_or(indent));
                    }
                    out.push(Entry::Scalar {
                        indent,
                        line: lineno,
                        text: strip_comment(rest).to_string(),
                    });
                }
            }
            break;
        }
    }
    out
}

fn parse_block(entries: &[Entry], i: &mut usize, min_indent: usize) -> Option<Node> {
    let first = entries.get(*i)?;
    if first.indent() < min_indent {
        return None;
    }
    let indent = first.indent();
    let line = first.line();
    match first {
        Entry::Dash { .. } => Some(Node {
            line,
            value: None,
            body: parse_seq(entries, i, indent),
        }),
        Entry::Key { .. } => Some(Node {
            line,
            value: None,
            body: parse_map(entries, i, indent),
        }),
        Entry::Scalar { text, .. } => {
            let value = Some(text.clone());
            *i += 1;
            skip_deeper(entries, i, indent);
            Some(Node {
                line,
                value,
                body: Body::Leaf,
            })
        }
    }
}

fn skip_deeper(entries: &[Entry], i: &mut usize, indent: usize) {
    while entries.get(*i).is_some_and(|e| e.indent() > indent) {
        *i += 1;
    }
}

fn parse_seq(entries: &[Entry], i: &mut usize, indent: usize) -> Body {
    let mut items = Vec::new();
    while let Some(Entry::Dash { indent: d, line }) = entries.get(*i) {
        if *d != indent {
            break;
        }
        let line = *line;
        *i += 1;
        let item = match entries.get(*i) {
            Some(next) if next.indent() > indent => parse_block(entries, i, indent + 1),
            _ => None,
        };
        let item = match item {
            Some(mut n) => {
                n.line = line;
                n
            }
            None => Node {
                line,
                value: None,
                body: Body::Leaf,
            },
        };
        items.push(item);
        skip_deeper(entries, i, indent);
    }
    Body::Seq(items)
}

fn parse_map(entries: &[Entry], i: &mut usize, indent: usize) -> Body {
    let mut fields = Vec::new();
    while let Some(Entry::Key {
        indent: k,
        line,
        key,
        value,
    }) = entries.get(*i)
    {
        if *k != indent {
            break;
        }
        let (line, key, value) = (*line, key.clone(), value.clone());
        *i += 1;
        let node = if value.is_empty() || value.starts_with('&') || value.starts_with('!') {
            match entries.get(*i) {
                Some(Entry::Dash { indent: d, .. }) if *d == indent => Node {
                    line,
                    value: None,
                    body: parse_seq(entries, i, indent),
                },
                Some(next) if next.indent() > indent => {
                    let body = parse_block(entries, i, indent + 1).map_or(Body::Leaf, |n| n.body);
                    Node {
                        line,
                        value: None,
                        body,
                    }
                }
                _ => Node {
                    line,
                    value: None,
                    body: Body::Leaf,
                },
            }
        } else {
            Node {
                line,
                value: Some(value),
                body: Body::Leaf,
            }
        };
        skip_deeper(entries, i, indent);
        fields.push((key, node));
    }
    Body::Map(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &[&str]) -> Vec<Seg> {
        s.iter()
            .map(|p| match p.parse::<usize>() {
                Ok(n) => Seg::Index(n),
                Err(_) => Seg::Key((*p).to_string()),
            })
            .collect()
    }

    #[test]
    fn splits_documents_keeping_lines() {
        let docs = split_documents("a: 1\n---\nb: 2\n--- # c\nc: 3\n...\nignored\n---\n");
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[0].first_line, 1);
        assert_eq!(docs[1].first_line, 2);
        assert_eq!(docs[1].start_line(), 3);
        assert_eq!(docs[2].first_line, 4);
        assert!(!docs[2].text.contains("ignored"));
        assert!(docs[3].is_blank());
        assert_eq!(split_documents("").len(), 1);
    }

    #[test]
    fn outline_finds_lines() {
        let text = "\
apiVersion: v1
kind: VirtualService # trailing comment
metadata:
  name: \"reviews\"
spec:
  hosts:
  - reviews
  http:
  - match:
    - uri:
        prefix: /a
    route:
    - destination:
        host: a
      weight: 50
  - route:
      - destination: {host: b}
        weight: 50
    description: |
      weight: 99
      - not: a key
    timeout: 5s
";
        let doc = YamlDocument {
            first_line: 10,
            text: text.into(),
        };
        let o = Outline::parse(&doc);
        assert_eq!(o.line_of(&path(&["kind"])), 11);
        assert_eq!(o.line_of(&path(&["spec", "hosts", "0"])), 16);
        assert_eq!(
            o.line_of(&path(&["spec", "http", "0", "route", "0", "weight"])),
            24
        );
        assert_eq!(
            o.line_of(&path(&["spec", "http", "0", "match", "0", "uri", "prefix"])),
            20
        );
        assert_eq!(
            o.line_of(&path(&["spec", "http", "1", "route", "0", "weight"])),
            27
        );
        assert_eq!(
            o.line_of(&path(&[
                "spec",
                "http",
                "1",
                "route",
                "0",
                "destination",
                "host"
            ])),
            26
        );
        assert_eq!(o.line_of(&path(&["spec", "http", "1", "timeout"])), 31);
        assert_eq!(o.line_of(&path(&["spec", "http", "7", "timeout"])), 17);
        assert_eq!(o.line_of(&path(&[])), 10);
        assert_eq!(
            o.scalar(&path(&["metadata", "name"])).as_deref(),
            Some("reviews")
        );
        assert_eq!(
            o.scalar(&path(&["kind"])).as_deref(),
            Some("VirtualService")
        );
    }

    #[test]
    fn quotes_ipv6_in_flow_sequences() {
        let text = "a: [1.2.3.4, 001:db8::]\nb: 1\n";
        let err = serde_yaml::from_str::<serde_yaml::Value>(text).err();
        let fixed = err.as_ref().and_then(|e| quote_flow_scalar(text, e));
        assert_eq!(
            fixed.as_deref(),
            Some("a: [1.2.3.4, \"001:db8::\"]\nb: 1\n")
        );
        let other = serde_yaml::from_str::<serde_yaml::Value>("a: [").err();
        assert_eq!(
            other.as_ref().and_then(|e| quote_flow_scalar("a: [", e)),
            None
        );
    }

    #[test]
    fn serde_errors_become_paths() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            spec: Inner,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            weight: Option<i32>,
        }
        let e = serde_yaml::from_str::<S>("spec:\n  bogus: 1\n").err();
        let f = e.as_ref().map(serde_failure);
        assert_eq!(
            f,
            Some(SerdeFailure {
                line: Some(2),
                context_line: None,
                path: Some("spec.bogus".into()),
                message: "unknown field `bogus`, expected `weight`".into(),
            })
        );
        let e = serde_yaml::from_str::<S>("spec:\n  weight: x\n").err();
        let f = e.as_ref().map(serde_failure);
        assert_eq!(
            f,
            Some(SerdeFailure {
                line: Some(2),
                context_line: None,
                path: Some("spec.weight".into()),
                message: "invalid type: string \"x\", expected a 32-bit integer".into(),
            })
        );
    }
}
