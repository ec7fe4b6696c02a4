//! API keys: a middleware that asks for `Authorization: Bearer KEY` on every route but
//! `/health` (and CORS preflights), compared in constant time, and the key-file reader.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The message of a 401 without a key.
const MISSING: &str =
    "You didn't provide an API key: pass it in the header `Authorization: Bearer KEY`.";
/// The message of a 401 with a wrong key (the key itself is never echoed).
const WRONG: &str =
    "Incorrect API key provided. Pass one of the server's keys in the header `Authorization: Bearer KEY`.";

/// The keys a server accepts; empty: no key is needed. `Debug` shows only how many there
/// are.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Box<[u8]>>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

impl ApiKeys {
    /// The set of `keys`; each must be printable ASCII without spaces (what a header can
    /// carry), else the error says which one (by position from 1) without showing it.
    pub fn new<I, S>(keys: I) -> Result<ApiKeys, KeyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for (i, k) in keys.into_iter().enumerate() {
            let k = k.as_ref();
            if !valid_key(k) {
                return Err(KeyError::Invalid { index: i + 1 });
            }
            out.push(k.as_bytes().into());
        }
        Ok(ApiKeys { keys: out })
    }

    /// No keys: the server is open.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether `presented` is one of the keys. Every key is compared in full with
    /// [`ct_eq`] whatever the earlier ones gave, so the time taken does not tell how many
    /// bytes of which key matched.
    pub fn check(&self, presented: &[u8]) -> bool {
        let mut ok = false;
        for k in &self.keys {
            ok |= ct_eq(k, presented);
        }
        ok
    }
}

/// Whether `k` can be a key: 1 or more printable ASCII characters, no spaces.
fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic())
}

/// Equality of `a` and `b` in time that depends only on their lengths: every byte position
/// up to the longer length is compared (missing bytes read as 0), the differences are
/// OR-ed together with the length difference, and nothing exits early.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = a.len() ^ b.len();
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        // black_box keeps the optimizer from turning the loop into an early exit.
        diff = std::hint::black_box(diff | usize::from(x ^ y));
    }
    diff == 0
}

/// What a key must be, for error messages.
const KEY_RULE: &str = "a key is 1 or more printable ASCII characters without spaces";

/// Why keys could not be taken. The messages never show a key.
#[derive(Debug)]
pub enum KeyError {
    /// A key given to [`ApiKeys::new`] is empty or has spaces, control or non-ASCII
    /// characters.
    Invalid {
        /// Which key, counting from 1.
        index: usize,
    },
    /// A line of a key file has spaces inside, control or non-ASCII characters.
    BadLine {
        /// Which line, counting from 1.
        line: usize,
    },
    /// A key file holds no key.
    NoKeys,
    /// A key file could not be read (missing, unreadable, not UTF-8).
    Io(std::io::Error),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Invalid { index } => write!(f, "API key {index} is not usable: {KEY_RULE}"),
            KeyError::BadLine { line } => {
                write!(f, "the key on line {line} is not usable: {KEY_RULE}")
            }
            KeyError::NoKeys => write!(
                f,
                "no API keys in it (one a line; blank lines and lines starting with # are skipped)"
            ),
            // The cause is the source, for error chains.
            KeyError::Io(_) => write!(f, "cannot read the key file"),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The keys of a key file's text: one a line, surrounding whitespace trimmed, blank lines
/// and lines starting with `#` skipped. A bad line is [`KeyError::BadLine`]; no key at all is [`KeyError::NoKeys`].
pub fn parse_key_file(text: &str) -> Result<Vec<String>, KeyError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let k = line.trim();
        if k.is_empty() || k.starts_with('#') {
            continue;
        }
        if !valid_key(k) {
            return Err(KeyError::BadLine { line: i + 1 });
        }
        keys.push(k.to_owned());
    }
    if keys.is_empty() {
        return Err(KeyError::NoKeys);
    }
    Ok(keys)
}

/// Reads and parses the key file at `path` (see [`parse_key_file`]).
pub fn read_key_file(path: &Path) -> Result<Vec<String>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(KeyError::Io)?;
    parse_key_file(&text)
}

/// The key a request presents: `Authorization: Bearer KEY` (the scheme in any case), else
/// `x-api-key: KEY`; `None` when it has neither.
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(v[7..].trim_ascii());
        }
    }
    headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii())
}

/// Whether a request needs no key: `/health` and CORS preflights (`OPTIONS`).
fn open(req: &Request) -> bool {
    req.method() == Method::OPTIONS || req.uri().path() == "/health"
}

/// The middleware: passes the request on when no keys are set, when it needs none
/// (`/health`, `OPTIONS`), or when it presents one of `keys` (see [`presented_key`]).
/// Otherwise it answers 401 with the OpenAI error object (`code: invalid_api_key`) and
/// `WWW-Authenticate: Bearer`, before the body is read. Unknown routes are 401 too, so a
/// client without a key learns nothing about which routes exist. Nothing about a refused
/// request is logged; the metrics layer around it counts it by route and status.
pub async fn require_key(State(keys): State<Arc<ApiKeys>>, req: Request, next: Next) -> Response {
    if keys.is_empty() || open(&req) {
        return next.run(req).await;
    }
    let refusal = match presented_key(req.headers()) {
        None => Some(MISSING),
        Some(k) if keys.check(k) => None,
        Some(_) => Some(WRONG),
    };
    match refusal {
        None => next.run(req).await,
        Some(message) => unauthorized(message),
    }
}

/// A 401 with the OpenAI error object and `WWW-Authenticate: Bearer`.
fn unauthorized(message: &str) -> Response {
    let mut r = ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_owned(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
        retry_after: None,
    }
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_is_plain_equality() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"sk-abc", b"sk-abc"));
        assert!(!ct_eq(b"sk-abc", b"sk-abd"));
        assert!(!ct_eq(b"sk-abc", b"tk-abc"));
        // Prefixes and extensions differ by length even where the bytes agree.
        assert!(!ct_eq(b"sk-abc", b"sk-ab"));
        assert!(!ct_eq(b"sk-ab", b"sk-abc"));
        assert!(!ct_eq(b"", b"a"));
        // Trailing zero bytes are not mistaken for the missing ones.
        assert!(!ct_eq(b"ab", b"ab\0"));
        assert!(!ct_eq(b"ab\0\0", b"ab"));
        // The length difference is kept whole, not cut to a byte.
        assert!(!ct_eq(&[0u8; 256], &[0u8; 512]));
    }

    #[test]
    fn check_takes_any_of_the_keys() {
        let keys = ApiKeys::new(["first-key", "second-key", "k3"]).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(!keys.is_empty());
        assert!(keys.check(b"first-key"));
        assert!(keys.check(b"second-key"));
        assert!(keys.check(b"k3"));
        assert!(!keys.check(b"first-ke"));
        assert!(!keys.check(b"first-keyy"));
        assert!(!keys.check(b"k"));
        assert!(!keys.check(b""));
        assert!(!keys.check(b"FIRST-KEY"));
        let none = ApiKeys::default();
        assert!(none.is_empty());
        assert!(!none.check(b"first-key"));
    }

    #[test]
    fn new_refuses_keys_a_header_cannot_carry() {
        for (keys, bad) in [
            (vec!["ok", ""], 2),
            (vec!["with space"], 1),
            (vec!["a", "b", "tab\there"], 3),
            (vec!["clé"], 1),
            (vec!["nl\n"], 1),
        ] {
            match ApiKeys::new(&keys) {
                Err(KeyError::Invalid { index }) => assert_eq!(index, bad, "{keys:?}"),
                r => panic!("{keys:?}: {r:?}"),
            }
        }
        assert_eq!(ApiKeys::new(Vec::<String>::new()).unwrap().len(), 0);
    }

    #[test]
    fn debug_and_errors_never_show_a_key() {
        let keys = ApiKeys::new(["sk-secret-1", "sk-secret-2"]).unwrap();
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
        let e = parse_key_file("good\nsk secret\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("the key on line 2 is not usable"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn key_file_lines() {
        let text = "\u{feff}# keys for the team\n\nsk-one\n  sk-two  \r\n\t\n#sk-retired\n   # indented comment\nsk-three";
        assert_eq!(
            parse_key_file(text).unwrap(),
            vec!["sk-one", "sk-two", "sk-three"]
        );
        assert_eq!(parse_key_file("k\r\n").unwrap(), vec!["k"]);
        assert!(matches!(parse_key_file(""), Err(KeyError::NoKeys)));
        assert!(matches!(
            parse_key_file("# only a comment\n\n   \n"),
            Err(KeyError::NoKeys)
        ));
        assert!(matches!(
            parse_key_file("a\n\nb c\n"),
            Err(KeyError::BadLine { line: 3 })
        ));
        assert!(matches!(
            parse_key_file("a\nkey\u{7f}\n"),
            Err(KeyError::BadLine { line: 2 })
        ));
    }

    #[test]
    fn read_key_file_errors() {
        let dir = std::env::temp_dir().join(format!("surplus-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("keys.txt");
        std::fs::write(&good, "alpha\nbeta\n").unwrap();
        assert_eq!(read_key_file(&good).unwrap(), vec!["alpha", "beta"]);
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(read_key_file(&empty), Err(KeyError::NoKeys)));
        let binary = dir.join("binary.txt");
        std::fs::write(&binary, [0xffu8, 0xfe, 0x00]).unwrap();
        assert!(matches!(read_key_file(&binary), Err(KeyError::Io(_))));
        match read_key_file(&dir.join("missing.txt")) {
            Err(KeyError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            r => panic!("{r:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn presented_key_reads_bearer_or_x_api_key() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for &(k, v) in pairs {
                m.append(k, HeaderValue::from_static(v));
            }
            m
        };
        assert_eq!(
            presented_key(&h(&[("authorization", "Bearer sk-1")])),
            Some(&b"sk-1"[..])
        );
        assert_eq!(
            presented_key(&h(&[("authorization", "bearer   sk-1 ")])),
            Some(&b"sk-1"[..])
        );
        assert_eq!(
            presented_key(&h(&[("x-api-key", "sk-2")])),
            Some(&b"sk-2"[..])
        );
        // Authorization wins over x-api-key.
        assert_eq!(
            presented_key(&h(&[
                ("x-api-key", "sk-2"),
                ("authorization", "Bearer sk-1")
            ])),
            Some(&b"sk-1"[..])
        );
        assert_eq!(presented_key(&h(&[])), None);
        // Another scheme is no key (and falls back on x-api-key).
        assert_eq!(
            presented_key(&h(&[("authorization", "Basic c2stMQ==")])),
            None
        );
        assert_eq!(presented_key(&h(&[("authorization", "Bearer")])), None);
        assert_eq!(
            presented_key(&h(&[("authorization", "Basic x"), ("x-api-key", "sk-2")])),
            Some(&b"sk-2"[..])
        );
    }
}
