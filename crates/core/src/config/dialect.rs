//! The lexer pass over the configuration dialect, run before json5 parses the text.
//!
//! It owns what json5 cannot do for us: it rewrites the seed's bare `Null`, `True` and
//! `False` (in value position, outside strings and comments) to lowercase, which keeps every
//! byte offset, line and column unchanged; it records where every object key and every value
//! sits, by path (`["ServiceDefaults", "KillTimeout"]`, array elements as `"[3]"`), plus every
//! key of every object in file order with duplicates kept, because the parsed
//! `serde_json::Value` has no positions and silently merges duplicate keys; and it catches the
//! common structural mistakes (a missing comma, an unclosed brace, an unquoted word) with a
//! message that points at the right line, where json5's own report often points at the end
//! of the previous value. Anything it does not catch, json5 still does.
//!
//! Its memory is linear in the text: positions live in a tree of path steps (each node names
//! one key or array index under its parent), never in a copy of the whole path per value, and
//! nesting deeper than [`MAX_DEPTH`] is a syntax error before json5 (whose parser recurses) or
//! serde_json ever see the text.

use std::collections::HashMap;
use std::ops::Range;

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Objects and arrays may nest this deep, the document's own braces included. Real files
/// nest four or five levels; the bound keeps a hostile file from costing memory or stack.
pub const MAX_DEPTH: usize = 64;

/// One step of a path: an object key, or an array index (written `"[3]"` in a path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Step {
    Key(Box<str>),
    Index(usize),
}

impl Step {
    fn of(part: &str) -> Step {
        part.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
            .map_or_else(|| Step::Key(part.into()), Step::Index)
    }
}

/// What is known about one path: where its key and its value start, and for an object every
/// key in file order.
#[derive(Debug, Default)]
struct Node {
    key: Option<Pos>,
    value: Option<Pos>,
    members: Vec<(String, Pos)>,
}

/// The root node: the document's top-level value.
const ROOT: usize = 0;

/// What the lexer learnt about a source text.
#[derive(Debug)]
pub struct Lexed {
    /// The source with bare `Null`/`True`/`False` lowercased; same length and layout.
    pub text: String,
    /// True when the source holds nothing but whitespace and comments.
    pub empty: bool,
    /// Every path seen, as a tree: `nodes[ROOT]` is the document, `children` leads from a node
    /// and a step to the child node. A duplicated key's node keeps its last occurrence (the
    /// one whose value `serde_json` keeps) and its parent's `members` keeps both.
    nodes: Vec<Node>,
    children: HashMap<(usize, Step), usize>,
    /// Problems json5 would let through silently (`NaN`, `Infinity`).
    pub errors: Vec<(Pos, String)>,
    /// The first structural error, after which nothing else is trustworthy.
    pub syntax: Option<(Pos, String)>,
}

impl Default for Lexed {
    fn default() -> Self {
        Lexed {
            text: String::new(),
            empty: false,
            nodes: vec![Node::default()],
            children: HashMap::new(),
            errors: Vec::new(),
            syntax: None,
        }
    }
}

impl Lexed {
    /// Where the key at `path` is, or the nearest enclosing one that is known.
    pub fn key_pos(&self, path: &[String]) -> Pos {
        self.nearest(path, |n| n.key.or(n.value))
    }

    /// Where the value at `path` is, or the nearest enclosing one that is known.
    pub fn value_pos(&self, path: &[String]) -> Pos {
        self.nearest(path, |n| n.value)
    }

    /// The nodes of `path` and of each of its prefixes that exist, root first.
    fn chain(&self, path: &[String]) -> Vec<usize> {
        let mut chain = vec![ROOT];
        for part in path {
            let at = chain[chain.len() - 1];
            match self.children.get(&(at, Step::of(part))) {
                Some(&child) => chain.push(child),
                None => break,
            }
        }
        chain
    }

    fn nearest(&self, path: &[String], pos: fn(&Node) -> Option<Pos>) -> Pos {
        self.chain(path)
            .iter()
            .rev()
            .find_map(|&n| pos(&self.nodes[n]))
            .unwrap_or(Pos { line: 1, column: 1 })
    }

    /// Keys of the object at `path` that repeat an earlier key, compared after `fold`:
    /// `(key as written, its position, position of the first one)`.
    pub fn duplicates(&self, path: &[String], fold: fn(&str) -> String) -> Vec<(String, Pos, Pos)> {
        let chain = self.chain(path);
        if chain.len() != path.len() + 1 {
            return Vec::new();
        }
        let mut first: HashMap<String, Pos> = HashMap::new();
        let mut dups = Vec::new();
        for (key, pos) in &self.nodes[chain[chain.len() - 1]].members {
            match first.get(&fold(key)) {
                Some(&at) => dups.push((key.clone(), *pos, at)),
                None => {
                    first.insert(fold(key), *pos);
                }
            }
        }
        dups
    }

    /// The node for `step` under `parent`, made if new.
    fn child(&mut self, parent: usize, step: Step) -> usize {
        let next = self.nodes.len();
        let id = *self.children.entry((parent, step)).or_insert(next);
        if id == next {
            self.nodes.push(Node::default());
        }
        id
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Key,
    Colon,
    Value,
    Comma,
}

#[derive(Debug)]
enum Frame {
    Object {
        node: usize,
        expect: Expect,
        /// The last key read and its node.
        key: Option<(String, usize)>,
        open: Pos,
    },
    Array {
        node: usize,
        index: usize,
        expect_value: bool,
        open: Pos,
    },
}

enum Token {
    Punct(char),
    Str(String),
    Word(String, Range<usize>),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Punct(c) => format!("`{c}`"),
            Token::Str(s) => format!("the string {s:?}"),
            Token::Word(w, _) => format!("`{w}`"),
        }
    }
}

struct Cursor<'a> {
    src: &'a str,
    at: usize,
    pos: Pos,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.at..].chars().next()
    }
    fn peek2(&self) -> Option<char> {
        self.src[self.at..].chars().nth(1)
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        if c == '\n' {
            self.pos.line += 1;
            self.pos.column = 1;
        } else {
            self.pos.column += 1;
        }
        Some(c)
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Result<(), (Pos, String)> {
        loop {
            match (self.peek(), self.peek2()) {
                (Some(c), _) if c.is_whitespace() || c == '\u{feff}' => {
                    self.bump();
                }
                (Some('/'), Some('/')) => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                (Some('/'), Some('*')) => {
                    let start = self.pos;
                    self.bump();
                    self.bump();
                    loop {
                        match (self.bump(), self.peek()) {
                            (Some('*'), Some('/')) => break,
                            (Some(_), _) => {}
                            (None, _) => {
                                return Err((
                                    start,
                                    "this comment is never closed with `*/`".into(),
                                ))
                            }
                        }
                    }
                    self.bump();
                }
                _ => return Ok(()),
            }
        }
    }

    fn next_token(&mut self) -> Result<Option<(Pos, Token)>, (Pos, String)> {
        self.skip_trivia()?;
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Ok(None);
        };
        let token = match c {
            '{' | '}' | '[' | ']' | ':' | ',' => {
                self.bump();
                Token::Punct(c)
            }
            '"' | '\'' => {
                self.bump();
                let body = self
                    .string_body(c)
                    .ok_or((start, "this string is never closed".to_owned()))?;
                Token::Str(body)
            }
            _ => {
                let from = self.at;
                while let Some(c) = self.peek() {
                    let comment = c == '/' && matches!(self.peek2(), Some('/' | '*'));
                    if c.is_whitespace() || "{}[]:,\"'".contains(c) || comment {
                        break;
                    }
                    self.bump();
                }
                if self.at == from {
                    // A lone `/`: no rule takes it.
                    self.bump();
                }
                Token::Word(self.src[from..self.at].to_owned(), from..self.at)
            }
        };
        Ok(Some((start, token)))
    }

    /// Reads a string up to its closing quote and returns its unescaped content; `None` when
    /// the line or the file ends first.
    fn string_body(&mut self, quote: char) -> Option<String> {
        let mut out = String::new();
        loop {
            match self.peek()? {
                '\n' | '\r' => return None,
                _ => {}
            }
            match self.bump()? {
                c if c == quote => return Some(out),
                '\\' => match self.bump()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    '0' => out.push('\0'),
                    '\n' => {}
                    'x' => {
                        let hex = self.take_hex(2);
                        out.extend(char::from_u32(hex));
                    }
                    'u' => {
                        let hi = self.take_hex(4);
                        let code = if (0xd800..0xdc00).contains(&hi)
                            && self.peek() == Some('\\')
                            && self.peek2() == Some('u')
                        {
                            self.bump();
                            self.bump();
                            let lo = self.take_hex(4);
                            0x10000 + ((hi - 0xd800) << 10) + (lo.wrapping_sub(0xdc00) & 0x3ff)
                        } else {
                            hi
                        };
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
    }

    fn take_hex(&mut self, n: usize) -> u32 {
        let mut v = 0;
        for _ in 0..n {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(d) => {
                    v = v * 16 + d;
                    self.bump();
                }
                None => break,
            }
        }
        v
    }
}

/// Checks a bare word in value position; rewrites the seed's capitalised literals.
fn check_word(
    word: &str,
    range: Range<usize>,
    pos: Pos,
    out: &mut Lexed,
    rewrites: &mut Vec<(Range<usize>, &'static str)>,
) -> Result<(), (Pos, String)> {
    let unsigned = word.trim_start_matches(['+', '-']);
    match word {
        "null" | "true" | "false" => {}
        "Null" => rewrites.push((range, "null")),
        "True" => rewrites.push((range, "true")),
        "False" => rewrites.push((range, "false")),
        _ if unsigned == "NaN" || unsigned == "Infinity" => {
            out.errors.push((
                pos,
                format!("`{word}` is not allowed here: numbers must be finite"),
            ));
        }
        _ if unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
            && word.len() - unsigned.len() <= 1 => {}
        _ => {
            let msg = "strings need quotes; literals are numbers, true, false and null";
            return Err((pos, format!("`{word}` is not a value: {msg}")));
        }
    }
    Ok(())
}

/// Runs the lexer pass over `src`.
pub fn lex(src: &str) -> Lexed {
    let mut out = Lexed {
        empty: true,
        ..Lexed::default()
    };
    let mut rewrites = Vec::new();
    if let Err(e) = walk(src, &mut out, &mut rewrites) {
        out.syntax = Some((e.0, format!("syntax error: {}", e.1)));
    }
    let mut text = src.to_owned();
    for (range, lower) in rewrites {
        text.replace_range(range, lower);
    }
    if text.starts_with('\u{feff}') {
        // json5 does not skip a byte-order mark; one space keeps every line and column.
        text.replace_range(..'\u{feff}'.len_utf8(), " ");
    }
    out.text = text;
    out
}

fn walk(
    src: &str,
    out: &mut Lexed,
    rewrites: &mut Vec<(Range<usize>, &'static str)>,
) -> Result<(), (Pos, String)> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut done = false; // the top-level value is complete
    let mut cur = Cursor {
        src,
        at: 0,
        pos: Pos { line: 1, column: 1 },
    };

    while let Some((pos, token)) = cur.next_token()? {
        out.empty = false;
        // The node of a value starting here (an array element's is made once one does), if
        // one may start here.
        let value_node: Option<(usize, Option<usize>)> = match stack.last() {
            None if done => {
                return Err((
                    pos,
                    format!(
                        "unexpected {} after the end of the document",
                        token.describe()
                    ),
                ));
            }
            None => Some((ROOT, None)),
            Some(Frame::Object {
                node,
                expect: Expect::Value,
                key,
                ..
            }) => Some((key.as_ref().map_or(*node, |k| k.1), None)),
            Some(&Frame::Array {
                node,
                index,
                expect_value: true,
                ..
            }) => Some((node, Some(index))),
            Some(_) => None,
        };
        let starts_value = matches!(
            token,
            Token::Str(_) | Token::Word(..) | Token::Punct('{' | '[')
        );

        if let (Some((vnode, element)), true) = (value_node, starts_value) {
            let vnode = element.map_or(vnode, |i| out.child(vnode, Step::Index(i)));
            match stack.last_mut() {
                Some(Frame::Object { expect, .. }) => *expect = Expect::Comma,
                Some(Frame::Array {
                    index,
                    expect_value,
                    ..
                }) => {
                    *index += 1;
                    *expect_value = false;
                }
                None => done = true,
            }
            out.nodes[vnode].value = Some(pos);
            if matches!(token, Token::Punct('{' | '[')) && stack.len() >= MAX_DEPTH {
                return Err((
                    pos,
                    format!("objects and arrays nest deeper than {MAX_DEPTH} levels here"),
                ));
            }
            match token {
                Token::Punct('{') => {
                    done = false;
                    stack.push(Frame::Object {
                        node: vnode,
                        expect: Expect::Key,
                        key: None,
                        open: pos,
                    });
                }
                Token::Punct('[') => {
                    done = false;
                    stack.push(Frame::Array {
                        node: vnode,
                        index: 0,
                        expect_value: true,
                        open: pos,
                    });
                }
                Token::Word(word, range) => check_word(&word, range, pos, out, rewrites)?,
                _ => {}
            }
            continue;
        }

        match (stack.last_mut(), token) {
            (
                Some(Frame::Object {
                    node,
                    expect: expect @ Expect::Key,
                    key,
                    ..
                }),
                Token::Str(k) | Token::Word(k, _),
            ) => {
                let child = out.child(*node, Step::of(&k));
                out.nodes[child].key = Some(pos);
                out.nodes[*node].members.push((k.clone(), pos));
                *key = Some((k, child));
                *expect = Expect::Colon;
            }
            (
                Some(Frame::Object {
                    expect: expect @ Expect::Colon,
                    ..
                }),
                Token::Punct(':'),
            ) => *expect = Expect::Value,
            (
                Some(Frame::Object {
                    expect: expect @ Expect::Comma,
                    ..
                }),
                Token::Punct(','),
            ) => *expect = Expect::Key,
            (
                Some(Frame::Array {
                    expect_value: e @ false,
                    ..
                }),
                Token::Punct(','),
            ) => *e = true,
            (
                Some(Frame::Object {
                    expect: Expect::Key | Expect::Comma,
                    ..
                }),
                Token::Punct('}'),
            )
            | (Some(Frame::Array { .. }), Token::Punct(']')) => {
                stack.pop();
                done = stack.is_empty();
            }
            (frame, token) => {
                let found = token.describe();
                let msg = match frame {
                    None => format!("expected a value, found {found}"),
                    Some(Frame::Object {
                        expect: Expect::Key,
                        ..
                    }) => format!("expected a key or `}}`, found {found}"),
                    Some(Frame::Object {
                        expect: Expect::Colon,
                        key,
                        ..
                    }) => {
                        format!(
                            "expected `:` after the key {:?}, found {found}",
                            key.as_ref().map_or("", |k| k.0.as_str())
                        )
                    }
                    Some(Frame::Object {
                        expect: Expect::Value,
                        ..
                    }) => format!("expected a value, found {found}"),
                    Some(Frame::Object {
                        expect: Expect::Comma,
                        ..
                    }) => {
                        format!("expected `,` or `}}` before {found} (is a comma missing?)")
                    }
                    Some(Frame::Array {
                        expect_value: true, ..
                    }) => format!("expected a value or `]`, found {found}"),
                    Some(Frame::Array { .. }) => {
                        format!("expected `,` or `]` before {found} (is a comma missing?)")
                    }
                };
                return Err((pos, msg));
            }
        }
    }
    match stack.last() {
        Some(Frame::Object { open, .. }) => {
            Err((*open, "this `{` is never closed with `}`".into()))
        }
        Some(Frame::Array { open, .. }) => Err((*open, "this `[` is never closed with `]`".into())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rewrites_bare_literals_only_in_value_position() {
        let src = "{ \"a\": Null, /* Null */ b: [True, False], \"Null\": 'True', // False\n }";
        let lexed = lex(src);
        assert_eq!(lexed.text.len(), src.len());
        assert_eq!(
            lexed.text,
            "{ \"a\": null, /* Null */ b: [true, false], \"Null\": 'True', // False\n }"
        );
    }

    #[test]
    fn records_key_and_value_positions_by_path() {
        let src = "{\n  \"S\": {\n    \"K\": 1,\n    'L': [2, {x: 3}],\n  },\n}\n";
        let lexed = lex(src);
        assert_eq!(lexed.key_pos(&p(&["S"])), Pos { line: 2, column: 3 });
        assert_eq!(lexed.key_pos(&p(&["S", "K"])), Pos { line: 3, column: 5 });
        assert_eq!(
            lexed.value_pos(&p(&["S", "K"])),
            Pos {
                line: 3,
                column: 10
            }
        );
        assert_eq!(
            lexed.value_pos(&p(&["S", "L", "[1]"])),
            Pos {
                line: 4,
                column: 14
            }
        );
        assert_eq!(
            lexed.key_pos(&p(&["S", "L", "[1]", "x"])),
            Pos {
                line: 4,
                column: 15
            }
        );
        assert!(!lexed.empty);
        // An unknown path falls back to the nearest enclosing one.
        assert_eq!(
            lexed.value_pos(&p(&["S", "L", "[7]"])),
            lexed.value_pos(&p(&["S", "L"]))
        );
    }

    /// 100,000 levels of nesting took gigabytes (a path per level, copied per level) and the
    /// kernel killed the controller; json5's parser would then have recursed as deep.
    #[test]
    fn nesting_100000_deep_is_one_syntax_error_at_level_65() {
        for open in ["[", "{\"a\":"] {
            let src = open.repeat(100_000);
            let lexed = lex(&src);
            let (pos, msg) = lexed.syntax.expect("a syntax error");
            assert!(msg.contains("nest deeper than 64 levels"), "{msg}");
            assert_eq!(pos.column, 64 * open.len() + 1, "{msg}");
            assert!(
                lexed.nodes.len() <= 2 * MAX_DEPTH,
                "{} nodes",
                lexed.nodes.len()
            );
        }
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(lex(&ok).syntax.is_none());
    }

    #[test]
    fn memory_is_one_node_per_value_not_a_path_per_value() {
        // Deep keys of 1000 characters over many array elements: a copied path per element
        // would be 60 MB here; a node per element is a few kilobytes of keys in all.
        let key = "k".repeat(1000);
        let src = format!(
            "{}[{}]{}",
            format!("{{\"{key}\":").repeat(60),
            "0,".repeat(10_000),
            "}".repeat(60)
        );
        let lexed = lex(&src);
        assert!(lexed.syntax.is_none(), "{:?}", lexed.syntax);
        assert_eq!(lexed.nodes.len(), 1 + 60 + 10_000);
        let deep: Vec<String> = (0..60)
            .map(|_| key.clone())
            .chain(["[9999]".into()])
            .collect();
        assert_eq!(
            lexed.value_pos(&deep).column,
            src.find("0,").map_or(0, |at| at + 1) + 2 * 9999
        );
    }

    #[test]
    fn keeps_duplicates_and_unescapes_keys() {
        let lexed = lex("{\"a\\u0062\": 1, \"ab\": 2, \"AB\": 3}");
        assert_eq!(lexed.duplicates(&[], |k| k.to_owned()).len(), 1);
        assert_eq!(lexed.duplicates(&[], |k| k.to_lowercase()).len(), 2);
    }

    #[test]
    fn comments_only_is_empty_and_non_finite_numbers_are_flagged() {
        assert!(lex("  // nothing\n/* here */\n").empty);
        let lexed = lex("{\"a\": -Infinity, \"b\": \"NaN\"}");
        assert_eq!(lexed.errors.len(), 1);
        assert_eq!(lexed.errors[0].0, Pos { line: 1, column: 7 });
    }
}
