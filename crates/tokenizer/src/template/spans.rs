//! Where message contents landed in a rendered prompt (see `RenderedPrompt::user_spans`).

use std::ops::Range;

use super::{ChatTemplate, Message, RenderOptions};

/// Candidate sentinel pairs (private-use plane 16); the first pair absent from the prompt and
/// from every content is used.
const SENTINELS: [(char, char); 4] = [
    ('\u{10FFF0}', '\u{10FFF1}'),
    ('\u{10FFF2}', '\u{10FFF3}'),
    ('\u{10FFF4}', '\u{10FFF5}'),
    ('\u{10FFF6}', '\u{10FFF7}'),
];

/// The ranges of `text` (rendered from `messages`) that hold message contents.
pub(super) fn find(
    t: &ChatTemplate,
    messages: &[Message],
    add_generation_prompt: bool,
    opts: &RenderOptions,
    text: &str,
) -> Vec<Range<usize>> {
    // Whitespace-only contents cannot inject anything; leave them alone.
    let active: Vec<bool> = messages
        .iter()
        .map(|m| !m.content.trim().is_empty())
        .collect();
    if !active.contains(&true) {
        return Vec::new();
    }
    let sentinels = SENTINELS.into_iter().find(|&(open, close)| {
        !text.contains([open, close]) && !messages.iter().any(|m| m.content.contains([open, close]))
    });
    // `inner`: sentinels inside the leading/trailing whitespace, for templates that strip it.
    let render = |wrap: &dyn Fn(usize) -> bool, inner: bool| -> Option<Vec<Range<usize>>> {
        let (open, close) = sentinels?;
        let wrapped: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message {
                role: m.role.clone(),
                content: if wrap(i) {
                    wrap_content(&m.content, open, close, inner)
                } else {
                    m.content.clone()
                },
                extra: m.extra.clone(),
            })
            .collect();
        let out = t.render_text(&wrapped, add_generation_prompt, opts).ok()?;
        strip_sentinels(&out, text, open, close)
    };
    let padded = |i: usize| messages[i].content.trim().len() != messages[i].content.len();
    // Whole contents first (spans then include their outer whitespace), then trimmed ones.
    let render_both = |wrap: &dyn Fn(usize) -> bool, any_padded: bool| {
        render(wrap, false).or_else(|| if any_padded { render(wrap, true) } else { None })
    };

    // Common case: one extra render locates everything.
    let any_padded = (0..messages.len()).any(|i| active[i] && padded(i));
    if let Some(spans) = render_both(&|i| active[i], any_padded) {
        return normalize(spans);
    }

    // The template reacts to the sentinels somewhere: one message at a time.
    let mut per: Vec<Option<Vec<Range<usize>>>> = (0..messages.len())
        .map(|i| {
            if active[i] {
                render_both(&|j| j == i, padded(i))
            } else {
                Some(Vec::new())
            }
        })
        .collect();
    if per.iter().any(Option::is_none) {
        let tail = generation_prompt_start(t, messages, add_generation_prompt, opts, text);
        for i in 0..messages.len() {
            if per[i].is_some() {
                continue;
            }
            let lo = per[..i]
                .iter()
                .flatten()
                .flatten()
                .map(|r| r.end)
                .max()
                .unwrap_or(0);
            let hi = per[i + 1..]
                .iter()
                .flatten()
                .flatten()
                .map(|r| r.start)
                .min()
                .unwrap_or(text.len())
                .min(tail);
            let hi = if hi < lo { text.len() } else { hi };
            per[i] = Some(search(text, &messages[i].content, lo, hi));
        }
    }
    normalize(per.into_iter().flatten().flatten().collect())
}

/// `content` between `open` and `close`; with `inner`, they go inside its leading and
/// trailing whitespace, so that templates that strip the content keep both.
fn wrap_content(content: &str, open: char, close: char, inner: bool) -> String {
    let (start, end) = if inner {
        let start = content.len() - content.trim_start().len();
        (start, content.trim_end().len().max(start))
    } else {
        (0, content.len())
    };
    let mut s = String::with_capacity(content.len() + 8);
    s.push_str(&content[..start]);
    s.push(open);
    s.push_str(&content[start..end]);
    s.push(close);
    s.push_str(&content[end..]);
    s
}

/// The ranges between `open`/`close` pairs of `out`, in the coordinates of `out` without the
/// sentinels, provided that text equals `expected` and the pairs are balanced.
fn strip_sentinels(
    out: &str,
    expected: &str,
    open: char,
    close: char,
) -> Option<Vec<Range<usize>>> {
    let mut stripped = String::with_capacity(out.len());
    let mut spans = Vec::new();
    let mut start: Option<usize> = None;
    for c in out.chars() {
        if c == open {
            if start.is_some() {
                return None;
            }
            start = Some(stripped.len());
        } else if c == close {
            let s = start.take()?;
            spans.push(s..stripped.len());
        } else {
            stripped.push(c);
        }
    }
    (start.is_none() && stripped == expected).then_some(spans)
}

/// Where the generation prompt starts (the end of `text` when there is none or it is not a
/// plain suffix).
fn generation_prompt_start(
    t: &ChatTemplate,
    messages: &[Message],
    add_generation_prompt: bool,
    opts: &RenderOptions,
    text: &str,
) -> usize {
    if !add_generation_prompt {
        return text.len();
    }
    match t.render_text(messages, false, opts) {
        Ok(without) if text.starts_with(&without) => without.len(),
        _ => text.len(),
    }
}

/// Fallback for a message the sentinels could not locate, within `text[lo..hi]`: the content
/// (exact, then trimmed) after `lo`, plus every occurrence of each special-token-looking piece
/// of the content (`<...>`, `[...]`) in that region.
fn search(text: &str, content: &str, lo: usize, hi: usize) -> Vec<Range<usize>> {
    let region = &text[lo..hi];
    let mut spans = Vec::new();
    let trimmed = content.trim();
    for needle in [content, trimmed] {
        if needle.is_empty() {
            continue;
        }
        if let Some(at) = region.find(needle) {
            spans.push(lo + at..lo + at + needle.len());
            break;
        }
    }
    for marker in markers(content) {
        for (at, m) in region.match_indices(marker) {
            spans.push(lo + at..lo + at + m.len());
        }
    }
    spans
}

/// Pieces of `content` that look like special tokens: `<...>` and `[...]` without whitespace
/// or nested brackets, up to 64 bytes inside.
fn markers(content: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let bytes = content.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let (close, nested) = match b {
            b'<' => (b'>', b'<'),
            b'[' => (b']', b'['),
            _ => continue,
        };
        let rest = &content[i + 1..];
        let Some(end) =
            rest.find(|c: char| c == close as char || c == nested as char || c.is_whitespace())
        else {
            continue;
        };
        if rest.as_bytes()[end] == close && end > 0 && end <= 64 {
            let m = &content[i..i + end + 2];
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

/// Sorts ranges and merges overlapping ones; drops empty ones.
fn normalize(mut spans: Vec<Range<usize>>) -> Vec<Range<usize>> {
    spans.retain(|r| r.start < r.end);
    spans.sort_by_key(|r| (r.start, r.end));
    let mut out: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for r in spans {
        match out.last_mut() {
            Some(last) if r.start < last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_inside_whitespace() {
        assert_eq!(wrap_content("  hi \n", '(', ')', true), "  (hi) \n");
        assert_eq!(wrap_content("  hi \n", '(', ')', false), "(  hi \n)");
        assert_eq!(wrap_content("hi", '(', ')', true), "(hi)");
    }

    #[test]
    fn strips_and_checks() {
        assert_eq!(
            strip_sentinels("a(b)c(d)", "abcd", '(', ')'),
            Some(vec![1..2, 3..4])
        );
        assert_eq!(strip_sentinels("a(b)c(d", "abcd", '(', ')'), None);
        assert_eq!(strip_sentinels("a(b(c))", "abc", '(', ')'), None);
        assert_eq!(strip_sentinels("a(b)", "ab ", '(', ')'), None);
    }

    #[test]
    fn finds_markers() {
        assert_eq!(
            markers("x <|im_end|> [INST] < a> <> <s><s> [/INST]"),
            vec!["<|im_end|>", "[INST]", "<s>", "[/INST]"]
        );
    }

    #[test]
    fn merges() {
        assert_eq!(
            normalize(vec![5..9, 0..2, 1..3, 4..4, 9..10]),
            vec![0..3, 5..9, 9..10]
        );
    }
}
