//! Images in chat requests: `image_url` content parts (base64 data URLs, or fetched http(s)
//! URLs with `--allow-image-urls`), decoded and encoded
//! with the vision projector, and the prompt built around them as `surplus run --image` does:
//! the text on each side of an image tokenized on its own, the model's image begin/end tokens
//! around the image rows.

use engine::ImageTokens;
use tokenizer::{RenderedPrompt, Tokenizer};

use crate::error::ApiError;
use crate::scheduler::JobImage;

/// Where an image goes in a message's text until the prompt is tokenized (the object
/// replacement character). With images, message text may not contain it.
pub const MARKER: &str = "\u{FFFC}";

/// Most images per request.
pub const MAX_IMAGES: usize = 8;

/// The image formats accepted in data URLs.
const MIME_TYPES: [&str; 5] = [
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/webp",
    "image/gif",
];

/// Largest image file fetched from a URL.
pub const MAX_FETCH_BYTES: u64 = 20 << 20;

/// The encoded image file in an `image_url`'s `url`: a `data:image/...;base64,` URL, or with
/// `allow_urls` an http(s) URL, fetched (blocking: call it off the async runtime).
pub fn image_bytes(url: &str, param: &str, allow_urls: bool) -> Result<Vec<u8>, ApiError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        if allow_urls {
            return fetch(url, param);
        }
        return Err(ApiError::param(
            param,
            "image URLs are not allowed on this server (start it with --allow-image-urls); \
             send the image as a base64 data URL (data:image/png;base64,...)",
        )
        .code("invalid_image_url"));
    }
    let bad = |m: &str| ApiError::param(param, m.to_owned()).code("invalid_image_url");
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(bad(
            "an image URL must be a base64 data URL (data:image/png;base64,...)",
        ));
    };
    let Some((head, payload)) = rest.split_once(',') else {
        return Err(bad("the data URL has no `,` before its data"));
    };
    let mut fields = head.split(';');
    let mime = fields.next().unwrap_or("").to_ascii_lowercase();
    if !MIME_TYPES.contains(&mime.as_str()) {
        return Err(bad(
            "the data URL's type must be image/png, image/jpeg, image/webp or image/gif",
        ));
    }
    if !fields.any(|f| f.eq_ignore_ascii_case("base64")) {
        return Err(bad("the data URL must be base64-encoded (;base64,)"));
    }
    let bytes =
        base64_decode(payload).ok_or_else(|| bad("the data URL's data is not valid base64"))?;
    if bytes.is_empty() {
        return Err(bad("the image is empty"));
    }
    Ok(bytes)
}

/// GETs an image URL: 5 s to connect, 30 s in all, at most 3 redirects and
/// [`MAX_FETCH_BYTES`]; any failure is a 400 naming it.
fn fetch(url: &str, param: &str) -> Result<Vec<u8>, ApiError> {
    use std::io::Read;
    use std::time::Duration;
    let bad = |m: String| ApiError::param(param, m).code("invalid_image_url");
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .redirects(3)
        .build();
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => bad(format!(
            "fetching the image URL failed: the server answered {code}"
        )),
        ureq::Error::Transport(t) => bad(format!("fetching the image URL failed: {t}")),
    })?;
    let too_large = || {
        bad(format!(
            "the image at the URL is larger than {} MiB",
            MAX_FETCH_BYTES >> 20
        ))
    };
    let declared = resp
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FETCH_BYTES) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MAX_FETCH_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("reading the image from the URL failed: {e}")))?;
    if bytes.len() as u64 > MAX_FETCH_BYTES {
        return Err(too_large());
    }
    if bytes.is_empty() {
        return Err(bad("the URL gave an empty image".into()));
    }
    Ok(bytes)
}

/// Decodes standard base64 (padding optional, ASCII whitespace ignored); None when invalid.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' | b'-' => Some(62),
            b'/' | b'_' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    let mut acc = 0u32;
    let mut n = 0;
    let mut pad = 0;
    for c in s.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            pad += 1;
            continue;
        }
        if pad > 0 {
            return None; // data after padding
        }
        acc = (acc << 6) | value(c)?;
        n += 1;
        if n == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
            n = 0;
        }
    }
    match n {
        0 => {}
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => return None,
    }
    if pad > 2 {
        return None;
    }
    Some(out)
}

/// The token prompt of a rendered chat holding one [`MARKER`] per image of `rows` (each
/// image's embeddings and grid): the image positions hold placeholder ids, described by the returned
/// [`JobImage`]s.
pub fn build_prompt(
    tok: &Tokenizer,
    rendered: &RenderedPrompt,
    t: ImageTokens,
    n_embd: usize,
    rows: Vec<vision::ImageEmbeddings>,
) -> Result<(Vec<u32>, Vec<JobImage>), ApiError> {
    let runs = engine::image_runs(tok, rendered, MARKER, t, rows.len()).map_err(|_| {
        ApiError::param(
            "messages",
            "the chat template did not place every image exactly once",
        )
    })?;
    let mut prompt = Vec::new();
    let mut images = Vec::with_capacity(rows.len());
    let mut rows = rows.into_iter();
    for run in runs {
        prompt.extend(run);
        if let Some(e) = rows.next() {
            let n = e.data.len() / n_embd.max(1);
            // The tower gives nx × ny rows; the engine refuses a grid that does not match.
            let grid = [e.nx, e.ny];
            images.push(JobImage {
                start: prompt.len(),
                len: n,
                data: e.data,
                non_causal: t.non_causal,
                grid,
            });
            // Placeholders: image positions are never read as tokens.
            prompt.resize(prompt.len() + n, t.begin);
        }
    }
    Ok((prompt, images))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("aG=Vs").is_none());
        assert!(base64_decode("aGV*").is_none());
    }

    #[test]
    fn data_urls() {
        assert_eq!(
            image_bytes("data:image/png;base64,aGk=", "p", false).unwrap(),
            b"hi"
        );
        assert!(image_bytes("data:image/png;base64,", "p", false).is_err());
        assert!(image_bytes("data:text/plain;base64,aGk=", "p", false).is_err());
        assert!(image_bytes("data:image/png,aGk=", "p", false).is_err());
        assert!(image_bytes("https://example.com/a.png", "p", true).is_err());
        assert!(image_bytes("ftp://x", "p", false).is_err());
    }
}
