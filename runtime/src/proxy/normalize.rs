//! Request path normalization, as Istio's MeshConfig `pathNormalization` sets Envoy up:
//! the path every route, plugin and upstream sees is the normalized one, so
//! `/public/../admin` cannot slip past a route or an auth plugin on `prefix: /admin`.
//! `serve` in `proxy.rs` runs it once per request, before routing; the query string is
//! never touched.
//!
//! | mode | Envoy settings Istio uses | what happens |
//! |---|---|---|
//! | `none` | `normalize_path: false` | nothing |
//! | `base` (default) | `normalize_path: true` | percent-encoded unreserved characters decoded, `\` read as `/`, dot segments removed (RFC 3986 5.2.4) |
//! | `merge-slashes` | + `merge_slashes: true` | `base`, then runs of `/` become one |
//! | `decode-and-merge-slashes` | + `path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD` | `%2F`/`%5C` (any case) decoded first, then `merge-slashes` |
//!
//! Other percent-encodings (`%2F` in the first three modes, `%25`, `%c0%af`...) are kept
//! exactly as received, hex case included, as Envoy keeps them. An encoded NUL (`%00`)
//! makes the path invalid (400), as in Envoy.

use std::borrow::Cow;

/// Istio's `ProxyPathNormalization.NormalizationType`, by its `wasmgate run
/// --path-normalization` name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PathNormalization {
    /// `NONE`: the path is forwarded and matched as received.
    None,
    /// `BASE`, Istio's default: RFC 3986 normalization.
    #[default]
    Base,
    /// `MERGE_SLASHES`: `base`, then `//` merged.
    MergeSlashes,
    /// `DECODE_AND_MERGE_SLASHES`: `%2F` and `%5C` decoded, then `merge-slashes`.
    DecodeAndMergeSlashes,
}

/// The path cannot be normalized: the request gets 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPath;

impl PathNormalization {
    /// `path` (no query) normalized; borrowed when nothing changes, which is nearly
    /// always. Paths that do not start with `/` (`*`, or none) are left alone.
    pub fn apply(self, path: &str) -> Result<Cow<'_, str>, InvalidPath> {
        if self == PathNormalization::None || !path.starts_with('/') {
            return Ok(Cow::Borrowed(path));
        }
        let merge = self != PathNormalization::Base;
        if !needs_work(path.as_bytes(), merge) {
            return Ok(Cow::Borrowed(path));
        }
        let decoded = decode(path, self == PathNormalization::DecodeAndMergeSlashes)?;
        let mut out = remove_dot_segments(&decoded);
        if merge {
            merge_slashes(&mut out);
        }
        if out == path {
            Ok(Cow::Borrowed(path))
        } else {
            Ok(Cow::Owned(out))
        }
    }
}

/// Whether `path` may change: it has an escape, a backslash, a segment starting with a
/// dot, or (when merging) an empty segment.
fn needs_work(path: &[u8], merge: bool) -> bool {
    path.iter().enumerate().any(|(i, b)| match b {
        b'%' | b'\\' => true,
        b'.' => i > 0 && path[i - 1] == b'/',
        b'/' => merge && path.get(i + 1) == Some(&b'/'),
        _ => false,
    })
}

/// RFC 3986 2.3.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Percent-decode unreserved characters (and, with `slashes`, `%2F` and `%5C`), read `\`
/// as `/`; every other byte and escape is kept as received.
fn decode(path: &str, slashes: bool) -> Result<String, InvalidPath> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            let value = (hi << 4) | lo;
            if value == 0 {
                return Err(InvalidPath);
            }
            if unreserved(value) {
                out.push(char::from(value));
            } else if slashes && matches!(value, b'/' | b'\\') {
                out.push('/');
            } else {
                out.push_str(&path[i..i + 3]);
            }
            i += 3;
            continue;
        }
        // Multi-byte UTF-8 is copied a char at a time; '\' is Envoy's extra rule.
        let c = path[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(if c == '\\' { '/' } else { c });
        i += c.len_utf8().max(1);
    }
    Ok(out)
}

/// RFC 3986 5.2.4 `remove_dot_segments`, for a path starting with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut input = path;
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            pop_segment(&mut out);
        } else if input == "/.." {
            input = "/";
            pop_segment(&mut out);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            // Move the first segment (with its leading '/', if any) to the output.
            let start = usize::from(input.starts_with('/'));
            let end = input[start..]
                .find('/')
                .map_or(input.len(), |at| at + start);
            out.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    out
}

/// Remove the output's last segment and the `/` before it.
fn pop_segment(out: &mut String) {
    let at = out.rfind('/').unwrap_or(0);
    out.truncate(at);
}

fn merge_slashes(path: &mut String) {
    let mut prev_slash = false;
    path.retain(|c| {
        let keep = !(c == '/' && prev_slash);
        prev_slash = c == '/';
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::{self, *};
    use super::*;

    fn norm(mode: PathNormalization, path: &str) -> String {
        mode.apply(path)
            .unwrap_or_else(|_| panic!("{path:?} rejected"))
            .into_owned()
    }

    /// RFC 3986 5.4.1 and 5.4.2 with base `http://a/b/c/d;p?q`: the path of each
    /// reference merged with the base path (5.2.3), then normalized, is the path of the
    /// RFC's target URI.
    #[test]
    fn rfc3986_reference_resolution_examples() {
        let cases = [
            // 5.4.1 normal examples (path references only).
            ("g", "/b/c/g"),
            ("./g", "/b/c/g"),
            ("g/", "/b/c/g/"),
            (";x", "/b/c/;x"),
            ("g;x", "/b/c/g;x"),
            ("", "/b/c/"),
            (".", "/b/c/"),
            ("./", "/b/c/"),
            ("..", "/b/"),
            ("../", "/b/"),
            ("../g", "/b/g"),
            ("../..", "/"),
            ("../../", "/"),
            ("../../g", "/g"),
            // 5.4.2 abnormal examples.
            ("../../../g", "/g"),
            ("../../../../g", "/g"),
            ("g.", "/b/c/g."),
            (".g", "/b/c/.g"),
            ("g..", "/b/c/g.."),
            ("..g", "/b/c/..g"),
            ("./../g", "/b/g"),
            ("./g/.", "/b/c/g/"),
            ("g/./h", "/b/c/g/h"),
            ("g/../h", "/b/c/h"),
            ("g;x=1/./y", "/b/c/g;x=1/y"),
            ("g;x=1/../y", "/b/c/y"),
        ];
        for (reference, target) in cases {
            let merged = format!("/b/c/{reference}");
            assert_eq!(norm(Base, &merged), target, "reference {reference:?}");
        }
        // Absolute-path references.
        assert_eq!(norm(Base, "/./g"), "/g");
        assert_eq!(norm(Base, "/../g"), "/g");
        // RFC 3986 5.2.4's own walk-through.
        assert_eq!(norm(Base, "/a/b/c/./../../g"), "/a/g");
        assert_eq!(norm(Base, "/mid/content=5/../6"), "/mid/6");
    }

    #[test]
    fn dot_segments_never_climb_above_the_root() {
        assert_eq!(norm(Base, "/.."), "/");
        assert_eq!(norm(Base, "/../.."), "/");
        assert_eq!(norm(Base, "/../../etc/passwd"), "/etc/passwd");
        assert_eq!(norm(Base, "/a/b/../../../../c"), "/c");
        assert_eq!(norm(Base, "/x/../hello"), "/hello");
        assert_eq!(norm(Base, "/public/../admin"), "/admin");
        assert_eq!(norm(Base, "/a/b/.."), "/a/");
        assert_eq!(norm(Base, "/a/."), "/a/");
    }

    #[test]
    fn encoded_dots_are_dot_segments_in_any_case() {
        assert_eq!(norm(Base, "/a/b/%2e%2e/c"), "/a/c");
        assert_eq!(norm(Base, "/a/b/%2E%2E/c"), "/a/c");
        assert_eq!(norm(Base, "/a/b/%2E%2e/c"), "/a/c");
        assert_eq!(norm(Base, "/a/b/%2E./c"), "/a/c");
        assert_eq!(norm(Base, "/a/b/%2E/c"), "/a/b/c");
        assert_eq!(norm(Base, "/public/%2e%2e/admin"), "/admin");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_as_received() {
        assert_eq!(norm(Base, "/%61dmin"), "/admin");
        assert_eq!(norm(Base, "/%41%7a%30%2D%5f%7E"), "/Az0-_~");
        // Reserved and other characters keep their escape, hex case untouched.
        assert_eq!(norm(Base, "/%5c%25"), "/%5c%25");
        assert_eq!(norm(Base, "/%c0%af"), "/%c0%af");
        assert_eq!(norm(Base, "/a%20b%3F"), "/a%20b%3F");
        // Only one level is decoded: %252e is "%2e" text, not a dot.
        assert_eq!(norm(Base, "/a/%252e%252e/b"), "/a/%252e%252e/b");
        // Broken escapes stay as they are.
        assert_eq!(norm(Base, "/a%zz/%4"), "/a%zz/%4");
        assert_eq!(norm(Base, "/100%"), "/100%");
    }

    #[test]
    fn encoded_slashes_are_kept_except_in_decode_mode() {
        for mode in [Base, MergeSlashes] {
            assert_eq!(norm(mode, "/a/%2F%2f/c"), "/a/%2F%2f/c");
            assert_eq!(norm(mode, "/a%2F..%2Fb"), "/a%2F..%2Fb");
            assert_eq!(norm(mode, "/a%5Cb"), "/a%5Cb");
        }
        assert_eq!(norm(DecodeAndMergeSlashes, "/a%2fb"), "/a/b");
        assert_eq!(norm(DecodeAndMergeSlashes, "/a%2F%2Fb"), "/a/b");
        assert_eq!(norm(DecodeAndMergeSlashes, "/a%5cb%5C"), "/a/b/");
        // Decoded first, so an encoded slash can form a dot segment.
        assert_eq!(
            norm(DecodeAndMergeSlashes, "/admin%2F..%2Fpublic"),
            "/public"
        );
        assert_eq!(
            norm(DecodeAndMergeSlashes, "/public%2f%2e%2e%2fadmin"),
            "/admin"
        );
    }

    #[test]
    fn backslashes_are_slashes() {
        assert_eq!(norm(Base, "/a/..\\c"), "/c");
        assert_eq!(norm(Base, "\\da"), "\\da", "not a path: left alone");
        assert_eq!(norm(Base, "/\\da"), "//da");
        assert_eq!(norm(MergeSlashes, "/\\da"), "/da");
    }

    #[test]
    fn empty_segments_and_slash_merging_per_mode() {
        assert_eq!(norm(Base, "/a//b"), "/a//b");
        assert_eq!(norm(Base, "//a/b/"), "//a/b/");
        assert_eq!(norm(Base, "/a//../b"), "/a/b");
        for mode in [MergeSlashes, DecodeAndMergeSlashes] {
            assert_eq!(norm(mode, "/a//b"), "/a/b");
            assert_eq!(norm(mode, "//a/b"), "/a/b");
            assert_eq!(norm(mode, "/a///b/c//"), "/a/b/c/");
            assert_eq!(norm(mode, "/a//./b"), "/a/b");
            assert_eq!(norm(mode, "/a/b//.."), "/a/b/");
        }
    }

    #[test]
    fn none_changes_nothing() {
        for p in ["/x/../hello", "/a//b", "/%61", "/a%2fb", "/a\\b", "/%00"] {
            assert_eq!(norm(None, p), p);
        }
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            for p in [
                "/",
                "/hello",
                "/a/b/c",
                "/a.b/c.d",
                "/.well-known/x",
                "/ünï",
            ] {
                assert!(
                    matches!(mode.apply(p), Ok(Cow::Borrowed(_))),
                    "{mode:?} {p:?}"
                );
            }
        }
        assert_eq!(norm(Base, "*"), "*");
    }

    #[test]
    fn encoded_nul_is_invalid() {
        for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
            assert_eq!(mode.apply("/a%00b"), Err(InvalidPath));
            assert_eq!(mode.apply("/xyz/.%00../abc"), Err(InvalidPath));
        }
    }
}
