//! GBNF (llama.cpp's grammar format) converted into the Lark dialect that llguidance compiles:
//! the rules are parsed and checked as llama.cpp does, then printed as Lark with `root` as `start`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// Why a GBNF grammar could not be converted, and on which line of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct GbnfError {
    /// The 1-based line of the grammar text where the problem was found.
    pub line: usize,
    /// What is wrong, in words.
    pub message: String,
}

/// Largest repetition count llama.cpp takes: a larger lower bound is an error, a larger upper
/// bound means "no upper bound".
const MAX_REPETITION: u64 = 2000;

/// Deepest nesting of parentheses a rule may have once printed as Lark: llguidance's Lark
/// parser refuses more than 28 levels. Groups count, and so do a repetition of a repetition
/// (`x**` is `(x*)*`) and a multi-character literal (it may be printed one string per character
/// in parentheses).
const MAX_NESTING: usize = 28;

/// Converts a GBNF grammar (llama.cpp's format, start rule `root`) into llguidance's Lark.
///
/// The accepted syntax follows llama.cpp's parser: `name ::= body` rules (names of ASCII
/// letters, digits and `-`), `"literals"` and `[classes]` with the escapes `\n \r \t \\ \"
/// \[ \] \- \xHH \uHHHH \UHHHHHHHH`, `.` for any character, `( )` groups, `|`, the postfix
/// operators `* + ?` and `{m} {m,} {m,n}` (and `{,n}`, which llama.cpp lacks), `#` comments,
/// and tokens `<[id]>`, `!<[id]>` and `<text>`. A rule ends at the end of its line unless the
/// line ends inside parentheses or right after a `|`. As in llama.cpp, a rule defined twice
/// keeps its last definition, and an upper repetition bound above 2000 counts as no bound,
/// while a lower bound above 2000 is an error.
///
/// The Lark has one line per rule:
/// - rule names are lowercased with `-` turned into `_` (a numbered suffix settles collisions,
///   `r_` goes before names that do not start with a letter), and `root` becomes `start`;
/// - literals become Lark strings, character classes one-character regex terminals `/[...]/`,
///   and `.` becomes `/(?s:.)/` (any character, newline included); llguidance lexes greedily
///   where GBNF has no lexer, so a literal that another terminal could cut short is printed as
///   one string per character (see `whole_literals`), which keeps what the grammar accepts;
/// - repetitions become Lark's `*`, `+`, `?` and `{m,n}`, which llguidance expands itself;
/// - `<[id]>` and `!<[id]>` become `<[id]>` and `<[^id]>`; `<text>` stays `<text>`, which
///   llguidance resolves only among special tokens (llama.cpp takes any text that is one
///   token), and `!<text>` is refused.
///
/// Errors (a syntax error, an unterminated literal, class or token, an unknown escape, a
/// reference to a rule that is never defined, no `root` rule) carry the line of the grammar
/// text they were found on.
pub fn to_lark(gbnf: &str) -> Result<String, GbnfError> {
    let grammar = Parser::new(gbnf).parse_grammar()?;
    grammar.check()?;
    Ok(grammar.to_lark())
}

/// Heuristic used by the server: does this grammar text look like GBNF (has `::=`) rather than Lark?
///
/// True when some line starts (after blanks) with a rule name followed by `::=`; Lark has no
/// such line, and a `::=` inside a comment or a literal does not count.
pub fn looks_like_gbnf(src: &str) -> bool {
    src.lines().any(|line| {
        let line = line.trim_start();
        let name_len = line.find(|c: char| !is_word_char(c)).unwrap_or(line.len());
        name_len > 0
            && line[name_len..]
                .trim_start_matches([' ', '\t'])
                .starts_with("::=")
    })
}

/// Characters of a GBNF rule name.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

/// A special token in a GBNF grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenRef {
    /// `<[id]>`: the token with this id.
    Id(u32),
    /// `<text>`: the token whose text this is.
    Text(String),
}

/// One element of a GBNF sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// `"..."`: these characters, in order.
    Literal(String),
    /// `[...]` or `[^...]`: one character in (or not in) these inclusive ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `.`: any one character.
    Any,
    /// A reference to a rule, with the line it is on.
    Ref { name: String, line: usize },
    /// `<...>` or `!<...>`: one token (or any token but that one).
    Token { negated: bool, token: TokenRef },
    /// `( a | b )`: alternatives, each a sequence.
    Group(Vec<Vec<Node>>),
    /// The inner element between `min` and `max` times (`None`: no upper bound).
    Repeat {
        inner: Box<Node>,
        min: u64,
        max: Option<u64>,
    },
}

/// A parsed GBNF grammar: each rule's alternatives, rules in order of first definition.
struct Grammar {
    /// Rule names in the order they were first defined.
    order: Vec<String>,
    /// Each rule's last definition.
    rules: HashMap<String, Vec<Vec<Node>>>,
    /// Every definition, replaced ones included, for the reference check.
    all_definitions: Vec<(String, Vec<Vec<Node>>)>,
}

impl Grammar {
    /// Checks that `root` exists and that every referenced rule is defined.
    fn check(&self) -> Result<(), GbnfError> {
        for (rule, alts) in &self.all_definitions {
            let mut refs = Vec::new();
            collect_refs(alts, &mut refs);
            for (name, line) in refs {
                if !self.rules.contains_key(name) {
                    return Err(GbnfError {
                        line,
                        message: format!("undefined rule `{name}` (referenced in rule `{rule}`)"),
                    });
                }
            }
        }
        if !self.rules.contains_key("root") {
            return Err(GbnfError {
                line: 1,
                message: "the grammar has no `root` rule (the start rule)".to_string(),
            });
        }
        Ok(())
    }

    /// Prints the grammar as Lark, `start` (from `root`) first.
    fn to_lark(&self) -> String {
        let emitter = Emitter {
            names: lark_names(&self.order),
            whole: whole_literals(&self.rules),
        };
        let mut out = String::new();
        let root = std::iter::once("root");
        let others = self
            .order
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "root");
        for name in root.chain(others) {
            let alts = &self.rules[name];
            out.push_str(&emitter.names[name]);
            out.push_str(": ");
            emitter.alternatives(&mut out, alts);
            out.push('\n');
        }
        out
    }
}

/// Appends every rule reference under `alts` (name and line) to `out`, in source order.
fn collect_refs<'a>(alts: &'a [Vec<Node>], out: &mut Vec<(&'a str, usize)>) {
    fn walk<'a>(node: &'a Node, out: &mut Vec<(&'a str, usize)>) {
        match node {
            Node::Ref { name, line } => out.push((name, *line)),
            Node::Group(alts) => collect_refs(alts, out),
            Node::Repeat { inner, .. } => walk(inner, out),
            Node::Literal(_) | Node::Class { .. } | Node::Any | Node::Token { .. } => {}
        }
    }
    for node in alts.iter().flatten() {
        walk(node, out);
    }
}

/// Lark rule names for GBNF rule names: `root` is `start`, the rest lowercased with `-` as
/// `_`; a name taken already (or that another rule would naturally get) gets a number.
fn lark_names(order: &[String]) -> HashMap<String, String> {
    fn base(name: &str) -> String {
        if name == "root" {
            return "start".to_string();
        }
        let mut s: String = name
            .chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            s.insert_str(0, "r_");
        }
        s
    }
    // `root` claims `start` first; every other rule claims its natural name in order of
    // definition, and one whose natural name is taken gets a suffix that is nobody's natural name.
    let root = order.iter().filter(|n| *n == "root");
    let others = order.iter().filter(|n| *n != "root");
    let natural: HashSet<String> = order.iter().map(|n| base(n)).collect();
    let mut used = HashSet::new();
    let mut names = HashMap::new();
    for name in root.chain(others) {
        let mut candidate = base(name);
        if (candidate == "start" && name != "root") || used.contains(&candidate) {
            let stem = candidate;
            candidate = (2..)
                .map(|k| format!("{stem}_{k}"))
                .find(|c| !used.contains(c) && !natural.contains(c))
                .unwrap_or_default();
        }
        used.insert(candidate.clone());
        names.insert(name.clone(), candidate);
    }
    names
}

/// What the rules print with: the Lark rule names and the literals that may stay whole.
struct Emitter {
    /// GBNF rule name to Lark rule name.
    names: HashMap<String, String>,
    /// Multi-character literals printed as one Lark string; the others are printed one
    /// character per string (see [`whole_literals`]).
    whole: HashSet<String>,
}

impl Emitter {
    /// Appends alternatives separated by ` | `.
    fn alternatives(&self, out: &mut String, alts: &[Vec<Node>]) {
        for (i, seq) in alts.iter().enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            self.sequence(out, seq);
        }
    }

    /// Appends a sequence, `""` when it is empty.
    fn sequence(&self, out: &mut String, seq: &[Node]) {
        if seq.is_empty() {
            out.push_str("\"\"");
        }
        for (i, node) in seq.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            self.node(out, node);
        }
    }

    /// Appends one element as a Lark expression that binds as tightly as an atom.
    fn node(&self, out: &mut String, node: &Node) {
        match node {
            Node::Literal(s) if s.chars().nth(1).is_some() && !self.whole.contains(s) => {
                out.push('(');
                for (i, c) in s.chars().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    write_lark_string(out, c.encode_utf8(&mut [0; 4]));
                }
                out.push(')');
            }
            Node::Literal(s) => write_lark_string(out, s),
            Node::Class { negated, ranges } => write_class(out, *negated, ranges),
            Node::Any => out.push_str(ANY_CHAR),
            Node::Ref { name, .. } => out.push_str(&self.names[name]),
            Node::Token { negated, token } => match token {
                TokenRef::Id(id) => {
                    let caret = if *negated { "^" } else { "" };
                    let _ = write!(out, "<[{caret}{id}]>");
                }
                // the parser refuses negated text tokens
                TokenRef::Text(text) => {
                    let _ = write!(out, "<{text}>");
                }
            },
            Node::Group(alts) => {
                out.push('(');
                self.alternatives(out, alts);
                out.push(')');
            }
            Node::Repeat { inner, min, max } => {
                let suffix = match (*min, *max) {
                    (0, Some(0)) => {
                        out.push_str("\"\"");
                        return;
                    }
                    (0, None) => "*".to_string(),
                    (1, None) => "+".to_string(),
                    (0, Some(1)) => "?".to_string(),
                    (m, None) => format!("{{{m},}}"),
                    (m, Some(n)) if m == n => format!("{{{m}}}"),
                    (m, Some(n)) => format!("{{{m},{n}}}"),
                };
                // Lark takes one operator per atom: a repeated repetition goes in parentheses.
                if matches!(**inner, Node::Repeat { .. }) {
                    out.push('(');
                    self.node(out, inner);
                    out.push(')');
                } else {
                    self.node(out, inner);
                }
                out.push_str(&suffix);
            }
        }
    }
}

/// Lark terminal for GBNF's `.`: any one character, newline included.
const ANY_CHAR: &str = "/(?s:.)/";

/// The multi-character literals of the rules that can be one Lark terminal without changing
/// what the grammar accepts.
///
/// llguidance lexes greedily (longest match): when one terminal has matched and another
/// allowed terminal can still go on, it goes on, and a parse that needed the shorter one is
/// lost. GBNF has no lexer, so this must never matter. Every other terminal this converter
/// prints matches exactly one character, so the danger is a literal whose proper prefix is
/// another terminal's match: its first character is matched by a class, `.` or a
/// one-character terminal, or another whole literal is a proper prefix of it. Such a literal
/// is printed one character per terminal, which adds its characters to the one-character
/// terminals, so this runs to a fixed point. The check looks at the whole grammar, not at
/// which terminals can meet at one position, so it splits more literals than it must.
fn whole_literals(rules: &HashMap<String, Vec<Vec<Node>>>) -> HashSet<String> {
    struct Terminals<'a> {
        any: bool,
        classes: Vec<(bool, &'a [(char, char)])>,
        chars: HashSet<char>,
        literals: HashSet<&'a str>,
    }
    fn walk<'a>(node: &'a Node, t: &mut Terminals<'a>) {
        match node {
            Node::Literal(s) => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => {
                        t.chars.insert(c);
                    }
                    (Some(_), Some(_)) => {
                        t.literals.insert(s);
                    }
                    (None, _) => {}
                }
            }
            Node::Class { negated, ranges } => t.classes.push((*negated, ranges)),
            Node::Any => t.any = true,
            Node::Group(alts) => alts.iter().flatten().for_each(|n| walk(n, t)),
            Node::Repeat { inner, .. } => walk(inner, t),
            Node::Ref { .. } | Node::Token { .. } => {}
        }
    }
    let mut t = Terminals {
        any: false,
        classes: Vec::new(),
        chars: HashSet::new(),
        literals: HashSet::new(),
    };
    for node in rules.values().flatten().flatten() {
        walk(node, &mut t);
    }
    // A literal that has another literal as a proper prefix is split: that prefix's own
    // first character makes it split in any case, whether or not the prefix is split.
    let by_class = |c: char| {
        t.any
            || t.classes
                .iter()
                .any(|(neg, ranges)| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *neg)
    };
    let mut split: Vec<&str> = Vec::new();
    let mut by_first: HashMap<char, Vec<&str>> = HashMap::new();
    let mut whole: HashSet<&str> = HashSet::new();
    for &lit in &t.literals {
        let first = lit.chars().next().unwrap_or_default();
        let has_prefix = lit
            .char_indices()
            .skip(2)
            .any(|(i, _)| t.literals.contains(&lit[..i]));
        if has_prefix || by_class(first) || t.chars.contains(&first) {
            split.push(lit);
        } else {
            whole.insert(lit);
            by_first.entry(first).or_default().push(lit);
        }
    }
    // Each split literal's characters are new one-character terminals, which can split more.
    while let Some(lit) = split.pop() {
        for c in lit.chars() {
            if t.chars.insert(c) {
                for cut in by_first.remove(&c).unwrap_or_default() {
                    whole.remove(cut);
                    split.push(cut);
                }
            }
        }
    }
    whole.into_iter().map(str::to_string).collect()
}

/// Appends a Lark string literal (JSON escapes) holding exactly `s`.
pub(crate) fn write_lark_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' || c == '\x7f' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a Lark regex terminal matching one character of the class.
fn write_class(out: &mut String, negated: bool, ranges: &[(char, char)]) {
    if ranges.is_empty() {
        // the parser only lets a negated class end up empty: it excludes nothing
        out.push_str(ANY_CHAR);
        return;
    }
    out.push_str(if negated { "/[^" } else { "/[" });
    for &(lo, hi) in ranges {
        write_class_char(out, lo);
        if hi != lo {
            out.push('-');
            write_class_char(out, hi);
        }
    }
    out.push_str("]/");
}

/// Appends one character inside a regex class, escaped so that neither the regex syntax
/// (`\ [ ] ^ - & ~`) nor Lark's `/.../` delimiters (`/`) see it as syntax.
fn write_class_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' | '[' | ']' | '^' | '-' | '&' | '~' => {
            out.push('\\');
            out.push(c);
        }
        '/' => out.push_str("\\x2F"),
        ' '..='~' => out.push(c),
        c if !c.is_ascii() && !c.is_control() && !c.is_whitespace() => out.push(c),
        c => {
            let _ = write!(out, "\\x{{{:X}}}", c as u32);
        }
    }
}

/// How deeply these alternatives nest parentheses once printed as Lark (see [`MAX_NESTING`]),
/// found without recursion.
fn nesting_depth(alts: &[Vec<Node>]) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Node, usize)> = alts.iter().flatten().map(|n| (n, 0)).collect();
    while let Some((node, depth)) = stack.pop() {
        match node {
            Node::Group(alts) => stack.extend(alts.iter().flatten().map(|n| (n, depth + 1))),
            Node::Repeat { inner, .. } => {
                let wrapped = matches!(**inner, Node::Repeat { .. });
                stack.push((inner, depth + usize::from(wrapped)));
            }
            Node::Literal(s) if s.chars().nth(1).is_some() => deepest = deepest.max(depth + 1),
            _ => deepest = deepest.max(depth),
        }
    }
    deepest
}

/// Splits an inclusive code point range into ranges of valid chars: surrogates and values
/// above U+10FFFF are left out (no text can hold them).
fn scalar_ranges(lo: u32, hi: u32, out: &mut Vec<(char, char)>) {
    let hi = hi.min(char::MAX as u32);
    let pieces = [(lo, hi.min(0xD7FF)), (lo.max(0xE000), hi)];
    for (a, b) in pieces {
        if a <= b {
            if let (Some(a), Some(b)) = (char::from_u32(a), char::from_u32(b)) {
                out.push((a, b));
            }
        }
    }
}

/// A recursive-descent parser over the grammar text that follows llama.cpp's rules.
struct Parser {
    chars: Vec<char>,
    /// Positions of the grammar's `\n` characters, for line numbers.
    newlines: Vec<usize>,
    pos: usize,
    /// How many `(` enclose the current position.
    depth: usize,
}

impl Parser {
    fn new(src: &str) -> Self {
        let chars: Vec<char> = src.chars().collect();
        let newlines = (0..chars.len()).filter(|&i| chars[i] == '\n').collect();
        Self {
            chars,
            newlines,
            pos: 0,
            depth: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    /// The 1-based line of character position `pos`.
    fn line_of(&self, pos: usize) -> usize {
        1 + self.newlines.partition_point(|&nl| nl < pos)
    }

    fn error_at(&self, pos: usize, message: impl Into<String>) -> GbnfError {
        GbnfError {
            line: self.line_of(pos),
            message: message.into(),
        }
    }

    fn error(&self, message: impl Into<String>) -> GbnfError {
        self.error_at(self.pos, message)
    }

    /// Describes what is at the current position, for error messages.
    fn found(&self) -> String {
        match self.peek() {
            None => "the end of the grammar".to_string(),
            Some('\n' | '\r') => "the end of the line".to_string(),
            Some(c) => format!("`{c}`"),
        }
    }

    /// Skips blanks and `#` comments, and line breaks too when `newline_ok`.
    fn skip_space(&mut self, newline_ok: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => self.pos += 1,
                '\r' | '\n' if newline_ok => self.pos += 1,
                '#' => {
                    while self.peek().is_some_and(|c| c != '\r' && c != '\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn parse_grammar(mut self) -> Result<Grammar, GbnfError> {
        let mut grammar = Grammar {
            order: Vec::new(),
            rules: HashMap::new(),
            all_definitions: Vec::new(),
        };
        self.skip_space(true);
        while self.peek().is_some() {
            let (name, alts) = self.parse_rule()?;
            if !grammar.rules.contains_key(&name) {
                grammar.order.push(name.clone());
            }
            grammar.all_definitions.push((name.clone(), alts.clone()));
            grammar.rules.insert(name, alts);
        }
        Ok(grammar)
    }

    fn parse_name(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(is_word_char) {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.chars[start..self.pos].iter().collect())
    }

    /// `name ::= alternatives` up to the end of its line (or of the grammar).
    fn parse_rule(&mut self) -> Result<(String, Vec<Vec<Node>>), GbnfError> {
        let Some(name) = self.parse_name() else {
            return Err(self.error(format!(
                "expected a rule name (letters, digits and `-`), found {}",
                self.found()
            )));
        };
        self.skip_space(false);
        if self.chars[self.pos..].starts_with(&[':', ':', '=']) {
            self.pos += 3;
        } else {
            return Err(self.error(format!(
                "expected `::=` after rule name `{name}`, found {}",
                self.found()
            )));
        }
        self.skip_space(true);
        let body = self.pos;
        let alts = self.parse_alternates(false)?;
        if nesting_depth(&alts) > MAX_NESTING {
            return Err(self.error_at(
                body,
                format!(
                    "rule `{name}` nests groups and repetitions more than {MAX_NESTING} deep \\
                     (llguidance's limit)"
                ),
            ));
        }
        match self.peek() {
            None => {}
            Some('\n') => self.pos += 1,
            Some('\r') => {
                self.pos += 1;
                if self.peek() == Some('\n') {
                    self.pos += 1;
                }
            }
            Some(c) => {
                return Err(self.error(format!("unexpected `{c}` in rule `{name}`")));
            }
        }
        self.skip_space(true);
        Ok((name, alts))
    }

    /// Sequences separated by `|` (a line break may follow a `|`).
    fn parse_alternates(&mut self, nested: bool) -> Result<Vec<Vec<Node>>, GbnfError> {
        let mut alts = vec![self.parse_sequence(nested)?];
        while self.peek() == Some('|') {
            self.pos += 1;
            self.skip_space(true);
            alts.push(self.parse_sequence(nested)?);
        }
        Ok(alts)
    }

    /// Elements up to a `|`, `)`, the end of the line (outside parentheses) or anything else
    /// that cannot start an element.
    fn parse_sequence(&mut self, nested: bool) -> Result<Vec<Node>, GbnfError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                '"' => items.push(self.parse_literal()?),
                '[' => items.push(self.parse_class()?),
                '<' | '!' => items.push(self.parse_token()?),
                '(' => {
                    let open = self.pos;
                    if self.depth >= MAX_NESTING {
                        return Err(
                            self.error(format!("parentheses nested more than {MAX_NESTING} deep"))
                        );
                    }
                    self.pos += 1;
                    self.skip_space(true);
                    self.depth += 1;
                    let alts = self.parse_alternates(true)?;
                    self.depth -= 1;
                    if self.peek() != Some(')') {
                        return Err(self.error(format!(
                            "expected `)` to close the `(` on line {}, found {}",
                            self.line_of(open),
                            self.found()
                        )));
                    }
                    self.pos += 1;
                    items.push(Node::Group(alts));
                }
                '.' => {
                    self.pos += 1;
                    items.push(Node::Any);
                }
                '*' | '+' | '?' | '{' => {
                    let Some(last) = items.pop() else {
                        return Err(self.error(format!("`{c}` must follow an element to repeat")));
                    };
                    let mut stacked = 0;
                    let mut node = &last;
                    while let Node::Repeat { inner, .. } = node {
                        stacked += 1;
                        node = inner;
                    }
                    // bounds the chain here; the rule's nesting check gives the exact limit
                    if stacked >= 2 * MAX_NESTING {
                        return Err(self.error("too many repetition operators on one element"));
                    }
                    let (min, max) = match c {
                        '*' => (0, None),
                        '+' => (1, None),
                        '?' => (0, Some(1)),
                        _ => self.parse_braces(nested)?,
                    };
                    if c != '{' {
                        self.pos += 1;
                    }
                    items.push(Node::Repeat {
                        inner: Box::new(last),
                        min,
                        max,
                    });
                }
                c if is_word_char(c) => {
                    let line = self.line_of(self.pos);
                    let name = self.parse_name().unwrap_or_default();
                    items.push(Node::Ref { name, line });
                }
                _ => break,
            }
            self.skip_space(nested);
        }
        Ok(items)
    }

    /// `{m}`, `{m,}`, `{m,n}` or `{,n}`, blanks allowed inside: the bounds.
    fn parse_braces(&mut self, nested: bool) -> Result<(u64, Option<u64>), GbnfError> {
        let start = self.pos;
        self.pos += 1;
        self.skip_space(nested);
        let min = self.parse_count()?;
        self.skip_space(nested);
        let max = match self.peek() {
            Some('}') => {
                if min.is_none() {
                    return Err(self.error("expected a repetition count in `{}`"));
                }
                min
            }
            Some(',') => {
                self.pos += 1;
                self.skip_space(nested);
                let max = self.parse_count()?;
                self.skip_space(nested);
                if self.peek() != Some('}') {
                    return Err(self.error(format!(
                        "expected `}}` to close the repetition, found {}",
                        self.found()
                    )));
                }
                max
            }
            _ => {
                return Err(self.error(format!(
                    "expected `,` or `}}` in the repetition, found {}",
                    self.found()
                )));
            }
        };
        self.pos += 1; // the `}`
        let min = min.unwrap_or(0);
        if min > MAX_REPETITION {
            return Err(self.error_at(
                start,
                format!("repetition count {min} is above the limit of {MAX_REPETITION}"),
            ));
        }
        let max = max.filter(|&n| n <= MAX_REPETITION);
        if let Some(max) = max {
            if max < min {
                return Err(self.error_at(
                    start,
                    format!(
                        "repetition `{{{min},{max}}}` has its upper bound below its lower bound"
                    ),
                ));
            }
        }
        Ok((min, max))
    }

    /// A decimal count, or `None` when no digit is here.
    fn parse_count(&mut self) -> Result<Option<u64>, GbnfError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.pos == start {
            return Ok(None);
        }
        let digits: String = self.chars[start..self.pos].iter().collect();
        // a count too large for u64 is far above the limit: saturate and let the caller judge
        Ok(Some(digits.parse().unwrap_or(u64::MAX)))
    }

    /// `"..."`: a literal.
    fn parse_literal(&mut self) -> Result<Node, GbnfError> {
        let open = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        self.error_at(open, "unterminated string literal (no closing `\"`)")
                    );
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(Node::Literal(text));
                }
                Some(_) => {
                    let at = self.pos;
                    let cp = self.parse_char()?;
                    let Some(c) = char::from_u32(cp) else {
                        return Err(self.error_at(
                            at,
                            format!("U+{cp:X} in a string literal is not a Unicode character"),
                        ));
                    };
                    text.push(c);
                }
            }
        }
    }

    /// `[...]` or `[^...]`: a character class.
    fn parse_class(&mut self) -> Result<Node, GbnfError> {
        let open = self.pos;
        self.pos += 1;
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        let mut any_item = false;
        loop {
            match self.peek() {
                None => {
                    return Err(
                        self.error_at(open, "unterminated character class (no closing `]`)")
                    );
                }
                Some(']') => {
                    self.pos += 1;
                    break;
                }
                Some(_) => {}
            }
            let at = self.pos;
            let lo = self.parse_char()?;
            let hi = if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.pos += 1;
                self.parse_char()?
            } else {
                lo
            };
            if hi < lo {
                return Err(self.error_at(
                    at,
                    format!(
                        "character range U+{lo:04X}-U+{hi:04X} in a class ends before it starts"
                    ),
                ));
            }
            any_item = true;
            scalar_ranges(lo, hi, &mut ranges);
        }
        if !any_item {
            return Err(self.error_at(open, "empty character class"));
        }
        if ranges.is_empty() && !negated {
            return Err(self.error_at(
                open,
                "character class holds no Unicode character (only surrogates or values above U+10FFFF)",
            ));
        }
        Ok(Node::Class { negated, ranges })
    }

    /// One character of a literal or class, escapes decoded: its code point.
    fn parse_char(&mut self) -> Result<u32, GbnfError> {
        let at = self.pos;
        let Some(c) = self.peek() else {
            return Err(self.error("unexpected end of the grammar"));
        };
        self.pos += 1;
        if c != '\\' {
            return Ok(c as u32);
        }
        let Some(e) = self.peek() else {
            return Err(self.error_at(at, "`\\` at the end of the grammar"));
        };
        self.pos += 1;
        match e {
            'x' => self.parse_hex(at, 'x', 2),
            'u' => self.parse_hex(at, 'u', 4),
            'U' => self.parse_hex(at, 'U', 8),
            't' => Ok('\t' as u32),
            'r' => Ok('\r' as u32),
            'n' => Ok('\n' as u32),
            '\\' | '"' | '[' | ']' | '-' => Ok(e as u32),
            other => Err(self.error_at(
                at,
                format!(
                    "unknown escape `\\{other}` (known: \\n \\r \\t \\\\ \\\" \\[ \\] \\- \\xHH \\uHHHH \\UHHHHHHHH)"
                ),
            )),
        }
    }

    /// The `digits` hex digits of a `\x`, `\u` or `\U` escape that started at `at`.
    fn parse_hex(&mut self, at: usize, kind: char, digits: usize) -> Result<u32, GbnfError> {
        let mut value: u32 = 0;
        for _ in 0..digits {
            let Some(d) = self.peek().and_then(|c| c.to_digit(16)) else {
                return Err(
                    self.error_at(at, format!("escape `\\{kind}` needs {digits} hex digits"))
                );
            };
            value = (value << 4) | d;
            self.pos += 1;
        }
        Ok(value)
    }

    /// `<[id]>`, `<text>`, or either negated with `!`.
    fn parse_token(&mut self) -> Result<Node, GbnfError> {
        let start = self.pos;
        let negated = self.peek() == Some('!');
        if negated {
            self.pos += 1;
        }
        if self.peek() != Some('<') {
            return Err(self.error(format!(
                "expected `<` after `!` (a negated token), found {}",
                self.found()
            )));
        }
        self.pos += 1;
        if self.peek() == Some('[') {
            self.pos += 1;
            let id_at = self.pos;
            let Some(id) = self.parse_count()? else {
                return Err(self.error(format!("expected a token id, found {}", self.found())));
            };
            let Ok(id) = u32::try_from(id) else {
                return Err(self.error_at(id_at, "token id is too large"));
            };
            if self.peek() != Some(']') || self.peek_at(1) != Some('>') {
                return Err(self.error(format!(
                    "expected `]>` to close the token id, found {}",
                    self.found()
                )));
            }
            self.pos += 2;
            return Ok(Node::Token {
                negated,
                token: TokenRef::Id(id),
            });
        }
        let text_start = self.pos;
        while self.peek().is_some_and(|c| c != '>') {
            self.pos += 1;
        }
        if self.peek().is_none() {
            return Err(self.error_at(start, "unterminated token (no closing `>`)"));
        }
        let text: String = self.chars[text_start..self.pos].iter().collect();
        self.pos += 1;
        if text.is_empty() || text.contains(|c: char| c == '<' || c.is_whitespace()) {
            return Err(self.error_at(
                start,
                format!("token `<{text}>` cannot be used: a token's text must be non-empty, without blanks or `<`"),
            ));
        }
        if negated {
            return Err(self.error_at(
                start,
                format!("negating a token by its text (`!<{text}>`) is not supported; use its id: `!<[id]>`"),
            ));
        }
        Ok(Node::Token {
            negated,
            token: TokenRef::Text(text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llguidance::{api::TopLevelGrammar, Matcher, ParserFactory};
    use toktrie::ApproximateTokEnv;

    /// A compiled grammar over a vocabulary of one token per byte (plus a few special tokens,
    /// ids 256..=261: `<|tool|>`, `<|/tool|>`, `<|user|>`, `<|system|>`, `<|assistant|>`,
    /// `<|end|>`, the last one EOS).
    struct Compiled {
        lark: String,
        matcher: Matcher,
    }

    impl Compiled {
        /// Compiles Lark text; panics with llguidance's message when it does not compile.
        fn lark(lark: &str) -> Self {
            let env = ApproximateTokEnv::single_byte_env();
            let mut factory = ParserFactory::new_simple(&env).unwrap();
            factory.quiet();
            let parser = factory.create_parser(TopLevelGrammar::from_lark(lark.to_string()));
            let matcher = Matcher::new(parser);
            assert!(!matcher.is_error(), "{lark}\n{:?}", matcher.get_error());
            Self {
                lark: lark.to_string(),
                matcher,
            }
        }

        /// Converts GBNF and compiles the result.
        fn gbnf(gbnf: &str) -> Self {
            Self::lark(&to_lark(gbnf).unwrap())
        }

        /// Whether the grammar takes exactly these tokens.
        fn accepts_tokens(&self, tokens: &[u32]) -> bool {
            let mut m = self.matcher.deep_clone();
            for &t in tokens {
                if m.consume_token(t).is_err() || m.is_error() {
                    return false;
                }
            }
            m.is_accepting().unwrap_or(false)
        }

        /// Whether the grammar takes exactly this text.
        fn accepts(&self, text: &str) -> bool {
            let tokens: Vec<u32> = text.bytes().map(u32::from).collect();
            self.accepts_tokens(&tokens)
        }

        /// Asserts that each of `good` is accepted and each of `bad` is not.
        fn check(&self, good: &[&str], bad: &[&str]) {
            for s in good {
                assert!(self.accepts(s), "should accept {s:?}\n{}", self.lark);
            }
            for s in bad {
                assert!(!self.accepts(s), "should reject {s:?}\n{}", self.lark);
            }
        }
    }

    /// Converts and asserts the error's line and that its message holds `needle`.
    fn assert_error(gbnf: &str, line: usize, needle: &str) {
        let err = to_lark(gbnf).expect_err(gbnf);
        assert_eq!(err.line, line, "{err}");
        assert!(err.message.contains(needle), "{err:?} lacks {needle:?}");
        assert_eq!(err.to_string(), format!("line {line}: {}", err.message));
    }

    #[test]
    fn prints_rules_as_lark() {
        let lark = to_lark(
            "root ::= \"a\\\"b\\\\c\\n\" [^\"\\\\/\\]a-z-] x*? \"\"\n\
             x ::= | \"yz\"{2,3} (\"q\" | \"r\"){2}{0}\n",
        )
        .unwrap();
        assert_eq!(
            lark,
            "start: \"a\\\"b\\\\c\\n\" /[^\"\\\\\\x2F\\]a-z\\-]/ (x*)? \"\"\n\
             x: \"\" | \"yz\"{2,3} \"\"\n"
        );
        let c = Compiled::lark(&lark);
        c.check(
            &["a\"b\\c\n!", "a\"b\\c\n\nyzyz", "a\"b\\c\n\u{e9}yzyzyzyzyz"],
            &[
                "a\"b\\c\n/",
                "a\"b\\c\nq",
                "a\"b\\c\n!yz",
                "a\"b\\c\n",
                "a\"b\\c!",
            ],
        );
    }

    #[test]
    fn json_grammar() {
        let c = Compiled::gbnf(include_str!("../testdata/gbnf/json.gbnf"));
        let long = format!("{{\"k\": \"{}\"}}", "abc\\\" ".repeat(400));
        c.check(
            &[
                "{}",
                "{\"k\":null}",
                "{\"a\": [1, 2.5, -3e2], \"b\": {\"c\": \"x\\n\\u00e9\"}, \"d\": true} ",
                "{\n  \"k\": \"v\"\n}",
                "{\"\u{e9}t\u{e9}\": [[], {}, false]}",
                &long,
            ],
            &[
                "",
                "[1]",
                "{\"a\": 01}",
                "{\"a\" 1}",
                "{\"a\": tru}",
                "{\"a\": \"x\\q\"}",
                "{\"a\": 1,}",
                "{\"a\":  1}",
                "{\"a\": \"line\nbreak\"}",
                "{\"a\": 1}}",
            ],
        );
    }

    #[test]
    fn arithmetic_grammar() {
        let c = Compiled::gbnf(include_str!("../testdata/gbnf/arithmetic.gbnf"));
        c.check(
            &[
                "1+2=3\n",
                "(a1 +b) *3= x\n",
                "x=y\n12/4=3\n",
                "( x_1 )=2\n\n",
            ],
            &["1+=3\n", "1+2=3", "A=1\n", "=1\n", "1+2=3\n="],
        );
    }

    #[test]
    fn list_and_enum_grammars() {
        let c = Compiled::gbnf(include_str!("../testdata/gbnf/list.gbnf"));
        c.check(
            &["- foo\n", "- foo\n- bar baz \u{e9}\n"],
            &["", "- foo", "-foo\n", "- a\rb\n", "- a\u{2028}b\n", "- \n"],
        );
        let c = Compiled::gbnf(
            "root ::= \"- \" color (\"\\n- \" color)*\n\
             color ::= \"red\" | \"green\" | \"blue\" | \"dark-\" color\n",
        );
        c.check(
            &["- red", "- red\n- dark-dark-blue", "- green\n- blue"],
            &["- purple", "- re", "-red", "- red\n", "- dark-", "- Red"],
        );
    }

    #[test]
    fn repetition_counts() {
        let c = Compiled::gbnf(
            "root ::= [0-9]{3} \"-\" [0-9]{2,4} \"-\" [a-z]{2,} \"!\"{,2} (\"#+\"{ 2 })? tail\n\
             tail ::= \"x\"{2}{3} \"y\"+? \"z\"{0} \"w\"{1,5000}\n",
        );
        assert!(c.lark.contains("\"!\"{0,2}"), "{}", c.lark);
        assert!(c.lark.contains("(\"x\"{2}){3}"), "{}", c.lark);
        assert!(c.lark.contains("\"w\"+"), "{}", c.lark);
        c.check(
            &[
                "123-45-abxxxxxxw",
                "123-4567-abc!!#+#+xxxxxxyyyww",
                "000-00-zz!xxxxxxywwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww",
            ],
            &[
                "12-45-abxxxxxxw",
                "123-45678-abxxxxxxw",
                "123-45-axxxxxxw",
                "123-45-ab!!!xxxxxxw",
                "123-45-ab#+xxxxxxw",
                "123-45-abxxxxxw",
                "123-45-abxxxxxxzw",
                "123-45-abxxxxxx",
            ],
        );
    }

    #[test]
    fn comments_and_multi_line_rules() {
        let src = "# a greeting grammar\n\
                   \n\
                   root ::= greeting |   # one of two\n\
                   \x20   farewell\n\
                   greeting ::= (\n\
                   \x20   \"hello\" # inside parentheses\n\
                   \n\
                   \x20   \" \"\n\
                   \x20   name\n\
                   \x20 )\n\
                   farewell ::=\n\
                   \x20 \"bye\"   # body on the next line\n\
                   name ::= [A-Z] [a-z]* # names\n";
        let good = ["hello World", "hello X", "bye"];
        let bad = ["hello bob", "hellobob", "bye ", "hello World bye", ""];
        Compiled::gbnf(src).check(&good, &bad);
        Compiled::gbnf(&src.replace('\n', "\r\n")).check(&good, &bad);
        // as in llama.cpp, a `|` continues a rule only at the end of a line, not at the start
        assert_error("root ::= \"a\"\n  | \"b\"\n", 2, "expected a rule name");
    }

    #[test]
    fn unicode_escapes_and_text() {
        let c = Compiled::gbnf(
            "root ::= \"caf\\u00e9 \" [\\u3041-\\u309F]+ \" \\U0001F600\" [^\\x00-\\x7F] \"\\x41\" \"日本\"\n",
        );
        c.check(
            &["caf\u{e9} \u{3072}\u{3089}\u{304c}\u{306a} \u{1F600}\u{fc}A日本"],
            &[
                "cafe \u{3072} \u{1F600}\u{fc}A日本",
                "caf\u{e9} \u{30AB} \u{1F600}\u{fc}A日本",
                "caf\u{e9} \u{3072} \u{1F600}uA日本",
                "caf\u{e9} \u{3072} \u{1F601}\u{fc}A日本",
            ],
        );
        let c = Compiled::gbnf(include_str!("../testdata/gbnf/japanese.gbnf"));
        c.check(
            &[
                "\u{3053}\u{3093}\u{306b}\u{3061}\u{306f}\u{3001}世界",
                "カタカナ ひらがな",
            ],
            &["hello", "\u{3053}\u{3093}  世界", ""],
        );
        // a class of characters that need escaping in a regex
        let c = Compiled::gbnf(include_str!("../testdata/gbnf/english.gbnf"));
        c.check(
            &["Hello, world! a/b [x]\\y ^_^ {z}~ \"q\" 'r' -1.5%"],
            &["h\u{e9}llo", "a  b", "", " a"],
        );
    }

    #[test]
    fn other_sample_grammars() {
        let c = Compiled::gbnf(include_str!("../testdata/gbnf/chess.gbnf"));
        c.check(
            &[
                "1. e4 e5\n2. Nf3 Nc6\n",
                "1. d4 d5\n2. c4 dxc4\n3. O-O Qxd1+\n",
            ],
            &[
                "1. e4 e5\n",
                "1. e9 e5\n2. Nf3 Nc6\n",
                "1. e4 e5\n2. Nf3 Nc6",
            ],
        );
        let c = Compiled::gbnf(include_str!("../testdata/gbnf/c.gbnf"));
        c.check(
            &[
                "int main(){return 0;}",
                "float f(int x){x = x*2;while(x<10){x = x+1;}return x;}",
            ],
            &["int main(){return 0}", "main(){}", "int main(){return0;}"],
        );
    }

    /// llguidance lexes greedily; literals that a one-character terminal or a shorter literal
    /// could cut short are printed one character per terminal, so these still parse as GBNF.
    #[test]
    fn overlapping_literals_parse_as_in_gbnf() {
        for (gbnf, good, bad) in [
            (
                "root ::= (\"a\" | \"ab\") \"b\"",
                &["ab", "abb"][..],
                &["a", "abbb"][..],
            ),
            ("root ::= \"ab\"? [a-z]+", &["ab", "abab", "x"], &["", "A"]),
            ("root ::= \"a\"* \"aa\"", &["aa", "aaa", "aaaa"], &["a", ""]),
            (
                "root ::= (\"ab\" | \"a\")* \"bc\"",
                &["abc", "ababc", "abbc", "bc"],
                &["ab"],
            ),
            (
                "root ::= (\"ab\" | \"a\" \"bc\") \"c\"",
                &["abc", "abcc"],
                &["ab", "abccc"],
            ),
            (
                "root ::= . * \"end\"",
                &["end", "the end", "endend"],
                &["en", "ending"],
            ),
        ] {
            Compiled::gbnf(gbnf).check(good, bad);
        }
        // literals no other terminal can cut short stay whole
        let lark = to_lark("root ::= (\"red\" | \"green\") [0-9]+ \"px\"\n").unwrap();
        assert_eq!(lark, "start: (\"red\" | \"green\") /[0-9]/+ \"px\"\n");
        let lark = to_lark("root ::= \"abc\" | \"abd\" | \"b\" [x]\n").unwrap();
        assert_eq!(lark, "start: \"abc\" | \"abd\" | \"b\" /[x]/\n");
        // "ab" cuts "abc" short, and then the one-character "a" cuts "ab" short
        let lark = to_lark("root ::= \"ab\" | \"abc\" | [x]\n").unwrap();
        assert_eq!(lark, "start: (\"a\" \"b\") | (\"a\" \"b\" \"c\") | /[x]/\n");
    }

    #[test]
    fn special_tokens() {
        let c = Compiled::gbnf("root ::= <[256]> \"x\"+ (<|user|> | \"u\") !<[257]>\n");
        assert_eq!(
            c.lark,
            "start: <[256]> \"x\"+ (<|user|> | \"u\") <[^257]>\n"
        );
        let [x, u, z] = [b'x', b'u', b'z'].map(u32::from);
        assert!(c.accepts_tokens(&[256, x, x, 258, 259]));
        assert!(c.accepts_tokens(&[256, x, u, z]));
        assert!(!c.accepts_tokens(&[256, x, 258, 257]));
        assert!(!c.accepts_tokens(&[x, 258, 259]));
        assert!(!c.accepts_tokens(&[256, 258, 259]));
        assert!(!c.accepts_tokens(&[256, x, 258]));
        assert_error(
            "root ::= \"a\" !<think>\n",
            1,
            "negating a token by its text",
        );
        assert_error("root ::= <[12\n", 1, "expected `]>`");
        assert_error("root ::=\n <[x]>\n", 2, "expected a token id");
        assert_error("root ::= <a b>\n", 1, "cannot be used");
        assert_error("root ::= \"a\" <think\n", 1, "unterminated token");
        assert_error("root ::= ! \"a\"\n", 1, "expected `<` after `!`");
    }

    #[test]
    fn rule_names() {
        let src = "root ::= dataType datatype start data-type 1st\n\
                   dataType ::= \"A\"\n\
                   datatype ::= \"b\"\n\
                   start ::= \"c\"\n\
                   data-type ::= \"d\"\n\
                   1st ::= \"e\"\n\
                   datatype-2 ::= \"f\"\n";
        let c = Compiled::gbnf(src);
        assert_eq!(
            c.lark,
            "start: datatype datatype_3 start_2 data_type r_1st\n\
             datatype: \"A\"\n\
             datatype_3: \"b\"\n\
             start_2: \"c\"\n\
             data_type: \"d\"\n\
             r_1st: \"e\"\n\
             datatype_2: \"f\"\n"
        );
        c.check(&["Abcde"], &["abcde", "Abcdef"]);
        // a rule defined twice keeps its last definition, as in llama.cpp
        let c = Compiled::gbnf("root ::= \"a\"\nroot ::= x\nx ::= \"b\"\n");
        c.check(&["b"], &["a"]);
    }

    #[test]
    fn errors_carry_lines() {
        assert_error(
            "root ::= a\n\nb ::= c\na ::= \"x\"\n",
            3,
            "undefined rule `c` (referenced in rule `b`)",
        );
        assert_error("foo ::= \"x\"\n", 1, "no `root` rule");
        assert_error("", 1, "no `root` rule");
        assert_error(
            "root ::= a\na ::= \"abc\n\n",
            2,
            "unterminated string literal",
        );
        assert_error("root ::= \"x\" [a-z\n", 1, "unterminated character class");
        assert_error("root ::= \"ok\" |\n  \"\\q\"\n", 2, "unknown escape `\\q`");
        assert_error("root ::= [\\w]\n", 1, "unknown escape `\\w`");
        assert_error("root ::= \"\\x4\"\n", 1, "needs 2 hex digits");
        assert_error("root ::= \"\\u12\"\n", 1, "needs 4 hex digits");
        assert_error("root ::= \"\\uD800\"\n", 1, "not a Unicode character");
        assert_error("root ::= \"a\\", 1, "at the end of the grammar");
        assert_error(
            "root ::= a\nfoo_bar ::= \"x\"\n",
            2,
            "expected `::=` after rule name `foo`",
        );
        assert_error("root ::= (\"a\" |\n \"b\"\n", 3, "expected `)`");
        assert_error("root ::= \"a\" )\n", 1, "unexpected `)`");
        assert_error("root ::= * \"a\"\n", 1, "`*` must follow an element");
        assert_error("root ::= \"a\" | {2}\n", 1, "`{` must follow an element");
        assert_error("root ::= [z-a]\n", 1, "ends before it starts");
        assert_error("root ::= []\n", 1, "empty character class");
        assert_error(
            "root ::= [\\uD800-\\uDFFF]\n",
            1,
            "holds no Unicode character",
        );
        assert_error(
            "root ::= \"a\"{3,2}\n",
            1,
            "upper bound below its lower bound",
        );
        assert_error("root ::= \"a\"{2001}\n", 1, "above the limit of 2000");
        assert_error("root ::= \"a\"{x}\n", 1, "expected `,` or `}`");
        assert_error("root ::= \"a\"{}\n", 1, "expected a repetition count");
        assert_error("root ::= \"a\"{1,2\n", 1, "expected `}`");
        assert_error(
            &format!("root ::= {}\"a\"{}\n", "(".repeat(100), ")".repeat(100)),
            1,
            "nested",
        );
        assert_error(
            &format!("root ::= \"a\"{}\n", "?".repeat(100)),
            1,
            "repetition operators",
        );
        // llguidance takes 28 levels of parentheses: groups, repeated repetitions and literals
        // that may be split count
        let groups = |n: usize, body: &str| {
            let (open, close) = ("(".repeat(n), ")*".repeat(n));
            format!("root ::= {open}{body}{close}\n")
        };
        Compiled::gbnf(&groups(28, "\"a\"")).check(&["", "aaa"], &["b"]);
        assert_error(&groups(29, "\"a\""), 1, "more than 28 deep");
        assert_error(&groups(28, "\"ab\""), 1, "more than 28 deep");
        Compiled::gbnf(&groups(27, "[a] \"aa\"")).check(&["", "aaaaaa"], &["aa"]);
        let stacked = |n: usize| format!("root ::= \"a\"{}\n", "?".repeat(n));
        Compiled::gbnf(&stacked(29)).check(&["", "a"], &["aa"]);
        assert_error(&stacked(30), 1, "more than 28 deep");
        // a negated class of only non-characters excludes nothing
        Compiled::gbnf("root ::= [^\\uD800]\n").check(&["a", "\n"], &["", "ab"]);
    }

    #[test]
    fn gbnf_is_told_from_lark() {
        assert!(looks_like_gbnf("root ::= \"a\""));
        assert!(looks_like_gbnf("  # comment\nroot::=x\n"));
        assert!(looks_like_gbnf("start: x\nmy-rule\t::= x"));
        assert!(!looks_like_gbnf("start: \"::=\""));
        assert!(!looks_like_gbnf("start: a\na: \"x ::= y\"\n"));
        assert!(!looks_like_gbnf("# root ::= x\nstart: \"a\"\n"));
        assert!(!looks_like_gbnf("foo::bar: x"));
        assert!(!looks_like_gbnf(""));
    }

    /// What GBNF itself accepts: a direct backtracking matcher over the parsed rules, giving
    /// every position an element can end at when it starts at `pos`.
    fn reference_ends(node: &Node, s: &[char], pos: usize, g: &Grammar) -> Vec<usize> {
        let alternatives = |alts: &[Vec<Node>]| -> Vec<usize> {
            let mut out = Vec::new();
            for seq in alts {
                let mut cur = vec![pos];
                for n in seq {
                    let mut next: Vec<usize> = cur
                        .iter()
                        .flat_map(|&p| reference_ends(n, s, p, g))
                        .collect();
                    next.sort_unstable();
                    next.dedup();
                    cur = next;
                }
                out.extend(cur);
            }
            out
        };
        match node {
            Node::Literal(l) => {
                let l: Vec<char> = l.chars().collect();
                let end = pos + l.len();
                if s.get(pos..end) == Some(&l[..]) {
                    vec![end]
                } else {
                    vec![]
                }
            }
            Node::Class { negated, ranges } => match s.get(pos) {
                Some(&c) if ranges.iter().any(|&(a, b)| a <= c && c <= b) != *negated => {
                    vec![pos + 1]
                }
                _ => vec![],
            },
            Node::Any => (pos < s.len()).then_some(pos + 1).into_iter().collect(),
            Node::Ref { name, .. } => alternatives(&g.rules[name]),
            Node::Group(alts) => alternatives(alts),
            Node::Token { .. } => vec![],
            Node::Repeat { inner, min, max } => {
                let mut out = Vec::new();
                let mut cur = vec![pos];
                // past len + min + 1 rounds only empty matches could add anything, and they add nothing new
                for k in 0..=(*min + s.len() as u64 + 1) {
                    if k >= *min {
                        out.extend(cur.iter().copied());
                    }
                    if Some(k) == *max || cur.is_empty() {
                        break;
                    }
                    let mut next: Vec<usize> = cur
                        .iter()
                        .flat_map(|&p| reference_ends(inner, s, p, g))
                        .collect();
                    next.sort_unstable();
                    next.dedup();
                    cur = next;
                }
                out
            }
        }
    }

    /// Random grammars over overlapping literals, classes and repetitions, and random short
    /// strings: llguidance on the converted grammar accepts exactly what GBNF accepts.
    #[test]
    fn agrees_with_gbnf_on_random_grammars() {
        let pieces = [
            "\"ab\"", "\"a\"", "\"b\"", "\"abc\"", "\"ba\"", "\"c\"", "\"\"", "\"é\"", "\"\\\"\"",
            "\"/\"", "[a-b]", "[^a]", "[é-ê]", "[\\\"/]", ".", "(", ")", "|", "*", "+", "?", "{2}",
            "{0,2}", "{1,}", "{,1}", "r1", "r2",
        ];
        let alphabet = ['a', 'b', 'a', 'b', 'c', 'é', '"', '/'];
        let mut state: u64 = 987_654_321;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(state >> 33).unwrap() % n
        };
        let (mut grammars, mut accepted, mut rejected) = (0, 0, 0);
        for _ in 0..5000 {
            // root may use r1 and r2, r1 may use r2: no recursion for the reference matcher
            let mut src = String::new();
            for (i, rule) in ["root", "r1", "r2"].into_iter().enumerate() {
                src.push_str(rule);
                src.push_str(" ::= ");
                for _ in 0..1 + next(8) {
                    let piece = match (i, pieces[next(pieces.len())]) {
                        (1, "r1") | (2, "r1" | "r2") => "\"a\"",
                        (_, piece) => piece,
                    };
                    src.push_str(piece);
                    src.push(' ');
                }
                src.push('\n');
            }
            let Ok(lark) = to_lark(&src) else { continue };
            let grammar = Parser::new(&src).parse_grammar().unwrap();
            let compiled = Compiled::lark(&lark);
            grammars += 1;
            for _ in 0..40 {
                let text: Vec<char> = (0..next(5))
                    .map(|_| alphabet[next(alphabet.len())])
                    .collect();
                let root = Node::Ref {
                    name: "root".to_string(),
                    line: 1,
                };
                let want = reference_ends(&root, &text, 0, &grammar).contains(&text.len());
                let text: String = text.into_iter().collect();
                assert_eq!(compiled.accepts(&text), want, "{text:?}\n{src}\n{lark}");
                if want {
                    accepted += 1;
                } else {
                    rejected += 1;
                }
            }
        }
        assert!(grammars > 400, "{grammars}");
        assert!(accepted > 1000 && rejected > 1000, "{accepted} {rejected}");
    }
}
